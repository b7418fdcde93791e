"""A persisted Chroma index is checked before it is reused: damaged HNSW segment files, a
deleted segment folder and a damaged chroma.sqlite3 are found before Chroma loads them, then
rebuilt (ragkit's cache) or reported (a folder the user chose); ``verify_index`` says the same.

The index has 1,500 documents: above Chroma's default sync threshold (1,000 vectors), so that
an index built the old way also has a saved HNSW segment, and these tests fail on it. Cases
whose damage can crash Chroma (a segmentation fault when a search walks a damaged graph) reopen
the index in a child process, so a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from ragkit import HuggingFaceEmbeddingsLoader, RagkitError
from ragkit.errors import CacheError
from ragkit.retrievers import INDEX_RECORD, ChromaIndex, build_chroma_index, chroma_settings, verify_index

N_DOCS = 1500
QUERIES = [f"query {i}" for i in range(10_000, 10_030)]
K = 10
HNSW_FILES = {"data_level0.bin", "header.bin", "length.bin", "link_lists.bin"}
TESTS = Path(__file__).resolve().parent


class RandomEmbeddings(Embeddings):
    """64 random dimensions per text (seeded by its last word), counting what it embeds."""

    model_name = "random-64"

    def __init__(self) -> None:
        self.texts = 0

    def _vector(self, text: str) -> list[float]:
        vector = np.random.default_rng(int(text.split()[-1])).standard_normal(64)
        return (vector / np.linalg.norm(vector)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def make_docs(n: int = N_DOCS) -> list[Document]:
    return [Document(f"doc {i}", metadata={"doc_id": f"d{i}"}) for i in range(n)]


def exact_top_k(n: int = N_DOCS) -> list[list[str]]:
    """Brute-force cosine top-K: what a healthy index must return."""
    emb = RandomEmbeddings()
    docs = np.array(emb.embed_documents([d.page_content for d in make_docs(n)]))
    queries = np.array([emb.embed_query(q) for q in QUERIES])
    return [[f"d{j}" for j in np.argsort(-row, kind="stable")[:K]] for row in queries @ docs.T]


def segment_dir(directory: Path) -> Path:
    [folder] = [p for p in directory.iterdir() if p.is_dir()]
    return folder


def close(index: ChromaIndex) -> None:
    """Stop Chroma's in-process system for the folder, as the end of a process would, so that
    the next open reads the files instead of what this process still holds in memory."""
    index.client.close()


def damage(directory: Path, kind: str) -> None:
    folder = segment_dir(directory)
    hnsw = folder / "data_level0.bin"
    sqlite = directory / "chroma.sqlite3"
    if kind == "truncate-hnsw":
        os.truncate(hnsw, hnsw.stat().st_size // 2)
    elif kind == "overwrite-hnsw":
        with open(hnsw, "r+b") as f:
            f.seek(hnsw.stat().st_size // 2)
            f.write(np.random.default_rng(0).bytes(256))
    elif kind == "delete-hnsw-folder":
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    elif kind == "truncate-sqlite":
        os.truncate(sqlite, sqlite.stat().st_size // 2)
    elif kind == "overwrite-sqlite":
        # A whole page in use, in the middle of them: a build leaves free pages too (Chroma's log
        # is purged once the HNSW index is saved), whose content nothing reads.
        import sqlite3

        connection = sqlite3.connect(sqlite)
        try:
            [(page_size,)] = connection.execute("PRAGMA page_size").fetchall()
            pages = [row[0] for row in connection.execute("SELECT pageno FROM dbstat ORDER BY pageno")]
        finally:
            connection.close()
        with open(sqlite, "r+b") as f:
            f.seek((pages[len(pages) // 2] - 1) * page_size)
            f.write(np.random.default_rng(0).bytes(page_size))
    elif kind == "delete-record":
        (directory / INDEX_RECORD).unlink()
    else:
        raise AssertionError(kind)


def reopen_in_child(persist_directory: Path | None = None, *, verify: Path | None = None) -> dict:
    """Run ``_child`` in a fresh interpreter (with this test's RAGKIT_CACHE_DIR); a crash there
    (rc -11) fails the test here."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    args = ["verify", str(verify)] if verify is not None else ["reopen", str(persist_directory or "")]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_index_integrity as t; t._child(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"child process died (rc {done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    """In the child: reopen the index (reporting warnings, embeds, exactness, any error) or verify a folder."""
    mode, where = argv
    if mode == "verify":
        print(json.dumps({"problems": verify_index(where)}))
        return
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    logging.getLogger("ragkit").addHandler(Keep())
    emb = RandomEmbeddings()
    result: dict = {"warnings": messages}
    try:
        index = build_chroma_index(make_docs(), emb, persist_directory=where or None, show_progress=False)
        result.update(
            directory=str(index.persist_directory),
            exact=[[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k(),
        )
    except Exception as exc:
        result["error"] = [type(exc).__name__, str(exc)]
    result["embedded"] = emb.texts
    print(json.dumps(result))


@pytest.fixture
def cached_index(cache) -> Path:
    """A 1,500-document index in ragkit's cache, closed as a finished process leaves it."""
    index = build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    directory = index.persist_directory
    assert directory.parent == cache / "chroma"
    close(index)
    return directory


@pytest.fixture
def user_index(tmp_path) -> Path:
    """The same index in a folder the user chose."""
    directory = tmp_path / "my-index"
    close(build_chroma_index(make_docs(), RandomEmbeddings(), persist_directory=directory, show_progress=False))
    return directory


def test_a_finished_build_has_its_hnsw_files_on_disk_and_recorded(cached_index, tmp_path):
    folder = segment_dir(cached_index)
    # The HNSW segment was saved whole (its id map too), not left to Chroma's write-ahead log.
    assert HNSW_FILES | {"index_metadata.pickle"} <= {p.name for p in folder.iterdir()}
    assert (folder / "data_level0.bin").stat().st_size > 0
    record = json.loads((cached_index / INDEX_RECORD).read_text())
    [(name, entry)] = record["collections"].items()
    assert {Path(p).name for p in entry["files"]} >= HNSW_FILES
    assert all(Path(p).parts[0] == folder.name for p in entry["files"])  # chroma.sqlite3 is not digested
    assert entry["count"] == N_DOCS and len(entry["probe"]["ids"]) == 16
    assert verify_index(cached_index) == []
    # A fresh process finds the same files: nothing was left unsynced, nothing rewritten on open.
    assert reopen_in_child(verify=cached_index) == {"problems": []}

    # Under Chroma's sync threshold too: the segment is saved, not replayed from the log on each open.
    small = build_chroma_index(
        make_docs(300), RandomEmbeddings(), persist_directory=tmp_path / "small", show_progress=False
    )
    close(small)
    assert "index_metadata.pickle" in {p.name for p in segment_dir(tmp_path / "small").iterdir()}
    assert reopen_in_child(verify=tmp_path / "small") == {"problems": []}


def test_a_healthy_index_is_reused_without_embedding(cached_index, caplog):
    caplog.set_level(logging.INFO, logger="ragkit")
    before = (cached_index / INDEX_RECORD).read_text()
    emb = RandomEmbeddings()
    index = build_chroma_index(make_docs(), emb, show_progress=False)
    assert emb.texts == 0 and index.persist_directory == cached_index
    assert any(r.getMessage().startswith("Reusing Chroma index") for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k()
    close(index)
    # Reopening and searching changed none of the digested files.
    assert (cached_index / INDEX_RECORD).read_text() == before
    assert verify_index(cached_index) == []


@pytest.mark.parametrize("kind", ["truncate-hnsw", "overwrite-hnsw"])
def test_damaged_hnsw_files_in_the_cache_are_rebuilt(cached_index, tmp_path, kind):
    damage(cached_index, kind)
    result = reopen_in_child()
    assert "error" not in result, result
    assert result["directory"] == str(cached_index)
    assert any(
        str(cached_index) in w and "data_level0.bin" in w and "building it afresh" in w for w in result["warnings"]
    ), result["warnings"]
    assert result["embedded"] == N_DOCS and result["exact"]
    assert verify_index(cached_index) == []


@pytest.mark.parametrize("kind", ["delete-hnsw-folder", "truncate-sqlite", "overwrite-sqlite", "delete-record"])
def test_damaged_index_in_the_cache_is_rebuilt_with_a_warning(cached_index, caplog, kind):
    damage(cached_index, kind)
    caplog.set_level(logging.WARNING, logger="ragkit")
    emb = RandomEmbeddings()
    index = build_chroma_index(make_docs(), emb, show_progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(cached_index) in w and "building it afresh" in w for w in warnings), warnings
    what = {
        "delete-hnsw-folder": "is missing",
        "truncate-sqlite": "chroma.sqlite3",
        "overwrite-sqlite": "chroma.sqlite3",
        "delete-record": INDEX_RECORD,
    }[kind]
    assert any(what in w for w in warnings), warnings
    assert emb.texts == N_DOCS and index.persist_directory == cached_index
    assert [[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k()
    close(index)
    assert verify_index(cached_index) == []


@pytest.mark.parametrize("kind", ["truncate-hnsw", "overwrite-hnsw", "delete-hnsw-folder", "overwrite-sqlite"])
def test_damaged_index_in_a_folder_the_user_chose_is_an_error_and_kept(user_index, tmp_path, kind):
    damage(user_index, kind)
    files = sorted(p.relative_to(user_index) for p in user_index.rglob("*"))
    result = reopen_in_child(user_index)
    assert result["error"][0] == "CacheError" and result["embedded"] == 0
    message = result["error"][1]
    assert str(user_index) in message and "delete" in message
    # The fix goes through Chroma, unless Chroma cannot open its database at all.
    assert ("pass rebuild=True" in message) == (kind != "overwrite-sqlite")
    assert any(str(user_index) in w for w in result["warnings"])
    assert sorted(p.relative_to(user_index) for p in user_index.rglob("*")) == files  # nothing deleted
    assert issubclass(CacheError, RagkitError)
    if kind != "overwrite-sqlite":  # the fix the message names works
        emb = RandomEmbeddings()
        index = build_chroma_index(make_docs(), emb, persist_directory=user_index, rebuild=True, show_progress=False)
        assert emb.texts == N_DOCS
        assert [[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k()
        close(index)
        assert verify_index(user_index) == []


def test_verify_index_reports_damage_without_loading_it(cached_index, user_index, tmp_path):
    assert verify_index(user_index) == []
    damage(cached_index, "overwrite-hnsw")
    [problem] = reopen_in_child(verify=cached_index)["problems"]  # a child: a load could crash
    assert "data_level0.bin" in problem and "sha256" in problem
    damage(user_index, "truncate-sqlite")
    [problem] = verify_index(user_index)
    assert "chroma.sqlite3" in problem
    assert "not a folder" in verify_index(tmp_path / "nowhere")[0]
    assert "no chroma.sqlite3" in verify_index(tmp_path)[0]
    (cached_index / INDEX_RECORD).write_text("{not json")
    assert "cannot be read" in verify_index(cached_index)[0]


def test_an_index_changed_through_chroma_is_completed_not_rebuilt(cached_index):
    index = build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    index.store._collection.delete(ids=["d7", "d8"])  # Chroma rewrites the segment files itself
    close(index)
    emb = RandomEmbeddings()
    repaired = build_chroma_index(make_docs(), emb, show_progress=False)
    assert emb.texts == 2 and repaired.count == N_DOCS
    close(repaired)
    assert verify_index(cached_index) == []


def test_probe_catches_a_changed_vector_on_a_client(tiny_embedder_path):
    import chromadb

    client = chromadb.EphemeralClient(settings=chroma_settings())
    emb = HuggingFaceEmbeddingsLoader(tiny_embedder_path, model_kwargs={"device": "cpu"})
    docs = [
        Document(f"the passage number {i} about {'reranking ' * (i % 7)}", metadata={"doc_id": f"p{i}"})
        for i in range(300)
    ]
    index = build_chroma_index(docs, emb, client=client, collection_name="probe-check", show_progress=False)
    probe = json.loads(client.get_collection("probe-check").metadata["ragkit_probe"])
    assert len(probe) == 16
    assert build_chroma_index(docs, emb, client=client, collection_name="probe-check", show_progress=False).count == 300
    # Overwrite a probe record's vector behind ragkit's back: same count, same marker.
    index.store._collection.update(ids=[probe[0]], embeddings=[[0.5] * len(emb.embed_query("x"))])
    with pytest.raises(CacheError, match="probe-check.*rebuild=True"):
        build_chroma_index(docs, emb, client=client, collection_name="probe-check", show_progress=False)
    rebuilt = build_chroma_index(
        docs, emb, client=client, collection_name="probe-check", rebuild=True, show_progress=False
    )
    assert rebuilt.count == 300
    assert build_chroma_index(docs, emb, client=client, collection_name="probe-check", show_progress=False).count == 300


class StopAfter(RandomEmbeddings):
    """Fails once it has embedded ``limit`` texts: a build interrupted part-way."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.texts + len(texts) > self.limit:
            raise KeyboardInterrupt
        return super().embed_documents(texts)


@pytest.fixture
def small_chroma_batches(monkeypatch):
    """Chroma accepting 100 vectors an add, so that 1,500 make a build of many adds and saves."""
    from chromadb.api.client import Client

    monkeypatch.setattr(Client, "get_max_batch_size", lambda self: 100)


def unsaved(directory: Path) -> int:
    """Log entries that Chroma's saved HNSW index does not hold."""
    import sqlite3

    connection = sqlite3.connect(f"{(directory / 'chroma.sqlite3').as_uri()}?mode=ro", uri=True)
    try:
        [(saved,)] = connection.execute(
            "SELECT COALESCE(MAX(m.seq_id), 0) FROM segments s JOIN max_seq_id m ON m.segment_id = s.id "
            "WHERE s.scope = 'VECTOR'"
        ).fetchall()
        return connection.execute("SELECT COUNT(*) FROM embeddings_queue WHERE seq_id > ?", (saved,)).fetchall()[0][0]
    finally:
        connection.close()


def test_a_build_of_many_adds_ends_with_every_vector_saved(cache, small_chroma_batches):
    index = build_chroma_index(make_docs(), RandomEmbeddings(), batch_size=64, show_progress=False)
    directory = index.persist_directory
    assert index.client.get_max_batch_size() == 100
    assert unsaved(directory) == 0
    assert [[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k()
    close(index)
    assert reopen_in_child(verify=directory) == {"problems": []}


def test_a_build_completed_after_an_interruption_ends_with_every_vector_saved(cache, small_chroma_batches, caplog):
    with pytest.raises(KeyboardInterrupt):
        build_chroma_index(make_docs(), StopAfter(1000), batch_size=64, show_progress=False)
    [directory] = (cache / "chroma").iterdir()
    assert unsaved(directory) > 0  # stopped between two saves
    caplog.set_level(logging.INFO, logger="ragkit")
    emb = RandomEmbeddings()
    index = build_chroma_index(make_docs(), emb, batch_size=64, show_progress=False)
    assert 0 < emb.texts < N_DOCS  # completed, not rebuilt
    # Its adds began part-way into a run of them: the last ones were saved on their own.
    assert any(r.getMessage().startswith("Saving the rest of Chroma's log") for r in caplog.records)
    assert index.persist_directory == directory and unsaved(directory) == 0
    assert [[d for d, _ in hits] for hits in index.search(QUERIES, K)] == exact_top_k()
    close(index)
    assert reopen_in_child(verify=directory) == {"problems": []}
