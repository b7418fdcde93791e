"""Where `langchain-community` does not install, the reranker loader returns ragkit's own
`SentenceTransformersCrossEncoder`: the same scores as LangChain community's
`HuggingFaceCrossEncoder` (one label and two), and LangChain's reranking pipeline and ragkit's
engine work on it unchanged."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from langchain_community.cross_encoders import HuggingFaceCrossEncoder
from langchain_core.documents import Document

from ragkit import HuggingFaceRerankerLoader, Pipeline, clear_cache, experiment
from ragkit.cross_encoders import SentenceTransformersCrossEncoder
from ragkit.loaders import cross_encoder_class

PAIRS = [("what is reranking", "a cross encoder reads the query and the passage"), ("paris", "france"),
         ("capital", "the gene and the protein in the cell " * 5)]  # fmt: skip


@pytest.fixture(scope="module")
def two_label_cross_encoder(tmp_path_factory) -> str:
    """A random-weight BERT with two labels (not relevant, relevant), as some rerankers have."""
    import torch
    from conftest import _tiny_bert_config, _tiny_tokenizer
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("two-label-cross-encoder")
    tokenizer = _tiny_tokenizer()
    BertForSequenceClassification(_tiny_bert_config(tokenizer.vocab_size, num_labels=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def without_langchain_community(monkeypatch):
    """An environment where `langchain-community` does not import (None in sys.modules makes
    an import raise ImportError, as a missing package does)."""
    for name in [m for m in sys.modules if m == "langchain_community" or m.startswith("langchain_community.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain_community", None)
    monkeypatch.setitem(sys.modules, "langchain_community.cross_encoders", None)


@pytest.mark.parametrize("labels", [1, 2])
def test_the_scores_are_langchain_communitys(labels, tiny_cross_encoder_path, two_label_cross_encoder):
    model = tiny_cross_encoder_path if labels == 1 else two_label_cross_encoder
    theirs = np.asarray(list(HuggingFaceCrossEncoder(model_name=model, model_kwargs={"device": "cpu"}).score(PAIRS)))
    ours = SentenceTransformersCrossEncoder(model_name=model, model_kwargs={"device": "cpu"}).score(PAIRS)
    assert ours.shape == (len(PAIRS),)
    np.testing.assert_array_equal(ours, theirs)


def test_the_loader_falls_back_when_langchain_community_does_not_import(
    tiny_cross_encoder_path, without_langchain_community
):
    assert cross_encoder_class() is SentenceTransformersCrossEncoder
    ce = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"})
    assert type(ce) is SentenceTransformersCrossEncoder
    assert HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"}) is ce  # cached


def test_langchains_reranking_and_ragkits_engine_work_on_the_fallback(
    tiny_embedder_path, tiny_cross_encoder_path, demo, cache, monkeypatch
):
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    docs = [Document(page_content=t, metadata={"doc_id": str(i)}) for i, (_, t) in enumerate(PAIRS)]
    community = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"})
    expected = CrossEncoderReranker(model=community, top_n=2).compress_documents(docs, "what is reranking")
    pipelines = [Pipeline(embedder=tiny_embedder_path) >> tiny_cross_encoder_path]
    before = experiment(demo, pipelines, latency_queries=0, show_progress=False, n_resamples=50, use_cache=False)

    clear_cache()  # the loaders' in-memory cache holds the community instance
    monkeypatch.setitem(sys.modules, "langchain_community", None)
    monkeypatch.setitem(sys.modules, "langchain_community.cross_encoders", None)
    fallback = HuggingFaceRerankerLoader(tiny_cross_encoder_path, model_kwargs={"device": "cpu"})
    assert type(fallback) is SentenceTransformersCrossEncoder
    got = CrossEncoderReranker(model=fallback, top_n=2).compress_documents(docs, "what is reranking")
    assert [d.metadata["doc_id"] for d in got] == [d.metadata["doc_id"] for d in expected]
    after = experiment(demo, pipelines, latency_queries=0, show_progress=False, n_resamples=50, use_cache=False)
    assert after.runs == before.runs
