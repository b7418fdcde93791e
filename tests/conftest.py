"""Shared fixtures: tiny random-weight BERT models built in seconds, and the shared BEIR copies.

Loader and pipeline mechanics are tested on these tiny models; quality is tested on the real
models that `python tools/provision_models.py` provisions (tests marked ``real_models``).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests, notebooks and CI read BEIR from the read-only copies beside the project.
os.environ.setdefault("RAGKIT_BEIR_DIR", str(REPO_ROOT.parent / "shared" / "beir"))

_WORDS = (
    "the a of to and in is for on what how why which reranking retrieval embedding vector store "
    "query passage document model cross encoder bi score rank chroma langchain bm25 ndcg recall "
    "paris france capital banana fruit yellow city river science cell protein gene"
).split()


def _tiny_tokenizer():
    """A WordPiece tokenizer over a few words and single characters, so any text tokenizes
    into real ids (transformers 5 wants the vocabulary itself, not a file name)."""
    from transformers import BertTokenizerFast

    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *string.ascii_lowercase,
        *string.digits,
        *string.punctuation,
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
        *_WORDS,
    ]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizerFast(vocab=vocab, model_max_length=128)


def _tiny_bert_config(vocab_size: int, num_labels: int = 1):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )


@pytest.fixture(scope="session")
def tiny_embedder_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight 2-layer BERT saved as a sentence-transformers folder (mean pooling)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-embedder")
    raw = folder / "raw"
    tokenizer = _tiny_tokenizer()
    assert tokenizer.convert_tokens_to_ids("reranking") != tokenizer.unk_token_id
    BertModel(_tiny_bert_config(tokenizer.vocab_size)).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=128)
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "mean")])
    out = folder / "model"
    model.save(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight 2-layer BERT with one output label, loadable by ``CrossEncoder``."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = _tiny_tokenizer()
    BertForSequenceClassification(_tiny_bert_config(tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def _fresh_loader_caches():
    """Each test starts with empty loader caches, so one test's models never leak into another."""
    import ragkit

    ragkit.clear_cache()
    yield
    ragkit.clear_cache()


@pytest.fixture(scope="session")
def spread_cross_encoder_path(tiny_cross_encoder_path, tmp_path_factory) -> str:
    """The tiny cross-encoder re-drawn with larger random weights, so its scores spread over
    (0, 1) and orders are not decided by float noise (the default init scores all near 0.5)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(1)
    config = AutoConfig.from_pretrained(tiny_cross_encoder_path)
    config.initializer_range = 0.5
    folder = tmp_path_factory.mktemp("spread-cross-encoder")
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_cross_encoder_path).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty ragkit cache folder for one test (``RAGKIT_CACHE_DIR``)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RAGKIT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def demo():
    """The demo collection that ships with ragkit (40 documents, 8 queries)."""
    from ragkit import load_beir

    return load_beir("demo")


@pytest.fixture()
def scored_pairs(monkeypatch) -> list[int]:
    """How many pairs the evaluation engine has the cross-encoder score, call by call (a spy on
    the one function every cross-encoder score comes from, which still scores them)."""
    import ragkit.rerank as rerank

    counts: list[int] = []
    real = rerank.score_pairs

    def spy(model, pairs, **kwargs):
        counts.append(len(pairs))
        return real(model, pairs, **kwargs)

    monkeypatch.setattr(rerank, "score_pairs", spy)
    return counts


@pytest.fixture()
def reranked(tiny_embedder_path, spread_cross_encoder_path) -> list:
    """Two pipelines over the tiny models: dense alone, and dense reranked (k=10)."""
    from ragkit.evaluate import Pipeline

    return [
        Pipeline(embedder=tiny_embedder_path),
        Pipeline(embedder=tiny_embedder_path, reranker=spread_cross_encoder_path, k=10),
    ]
