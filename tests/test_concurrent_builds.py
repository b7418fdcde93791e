"""Processes that build the same index on one cache at once build it once: the others wait
for the build lock, then check the finished index and reuse it; none deletes what another
is building.

The builders are real processes started together (a start barrier of files), embedding with
the tiny random-weight BERT of conftest.py through an embedder that, once it starts
embedding, waits a few seconds for another builder to start embedding too: without the
lock every builder embeds, with it only the first.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from ragkit import HuggingFaceEmbeddingsLoader
from ragkit.retrievers import BUILD_LOCK, build_chroma_index, verify_index

BUILDERS = 3
N_DOCS = 200
QUERIES = ["passage about reranking", "the passage number 7"]
TESTS = Path(__file__).resolve().parent
# How long a builder that started embedding waits for another to start too. Without the lock
# all start within a second of each other (they leave the start barrier together).
OVERLAP_WAIT_S = 8.0


def make_docs() -> list[Document]:
    return [
        Document(f"the passage number {i} about {'reranking ' * (i % 7)}", metadata={"doc_id": f"p{i}"})
        for i in range(N_DOCS)
    ]


class RendezvousEmbeddings(Embeddings):
    """The tiny BERT, counting what it embeds; on its first batch it announces itself in
    ``folder`` and waits (up to OVERLAP_WAIT_S) for another builder's announcement."""

    def __init__(self, model_path: str, folder: Path) -> None:
        self.inner = HuggingFaceEmbeddingsLoader(model_path, model_kwargs={"device": "cpu"})
        self.model_name = model_path
        self.folder = folder
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.texts == 0:
            (self.folder / f"embedding-{os.getpid()}").touch()
            deadline = time.monotonic() + OVERLAP_WAIT_S
            while len(list(self.folder.glob("embedding-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _builder(model_path: str, folder: str) -> None:
    """In a child: wait at the start barrier, build, report what happened as one JSON line."""
    messages: list[list] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append([record.levelname, record.getMessage()])

    logger = logging.getLogger("ragkit")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    barrier = Path(folder)
    emb = RendezvousEmbeddings(model_path, barrier)
    (barrier / f"ready-{os.getpid()}").touch()
    while len(list(barrier.glob("ready-*"))) < BUILDERS:
        time.sleep(0.02)
    index = build_chroma_index(make_docs(), emb, show_progress=False)
    hits = index.search(QUERIES, 5)
    print(
        json.dumps(
            {
                "embedded": emb.texts,
                "directory": str(index.persist_directory),
                "fingerprint": index.fingerprint,
                "count": index.count,
                "hits": [[doc_id for doc_id, _ in found] for found in hits],
                "log": messages,
            }
        )
    )


def test_builders_started_together_build_once_and_share_the_index(cache, tiny_embedder_path, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_concurrent_builds as t; "
        "t._builder(sys.argv[1], sys.argv[2])"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, tiny_embedder_path, str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(BUILDERS)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, f"builder died (rc {child.returncode}):\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))

    # Exactly one builder embedded (all of it); the others embedded nothing.
    assert sorted(r["embedded"] for r in results) == [0] * (BUILDERS - 1) + [N_DOCS], results
    # Nothing failed a check, nothing was deleted or rebuilt: no warning at all.
    assert not [m for r in results for m in r["log"] if m[0] in ("WARNING", "ERROR")], results
    # The others waited for the lock, then checked the finished index and reused it.
    for r in results:
        if r["embedded"] == 0:
            assert any(m.startswith("Reusing Chroma index") for _, m in r["log"]), r["log"]
    # All hold the same index, with the same answers.
    assert len({(r["directory"], r["fingerprint"], r["count"]) for r in results}) == 1
    assert all(r["hits"] == results[0]["hits"] for r in results)
    directory = Path(results[0]["directory"])
    assert directory.parent == cache / "chroma"
    assert [p.name for p in (cache / "chroma").iterdir()] == [directory.name]
    assert verify_index(directory) == []
    assert (directory / BUILD_LOCK).is_file()


def test_a_lock_file_deleted_while_waiting_is_made_and_taken_again(tmp_path):
    """A folder removed as a whole by the lock's holder (what a build that ran out of disk
    space leaves behind: nothing) leaves its waiter holding a lock on a deleted file: the
    waiter must make a new lock file and take that one, or a third builder would not wait."""
    import fcntl
    import shutil
    import threading

    from ragkit.retrievers import _build_lock

    folder = tmp_path / "index"
    waiting, holding, release = threading.Event(), threading.Event(), threading.Event()

    def waiter() -> None:
        waiting.set()
        with _build_lock(folder):
            holding.set()
            release.wait(30)

    with _build_lock(folder):
        thread = threading.Thread(target=waiter)
        thread.start()
        waiting.wait(30)
        time.sleep(0.5)  # let the waiter reach its flock on this lock file
        assert not holding.is_set()
        shutil.rmtree(folder)
    assert holding.wait(30)
    # The lock the waiter holds is the file now at the path: a newcomer cannot take it.
    with open(folder / BUILD_LOCK, "ab") as newcomer:
        try:
            fcntl.flock(newcomer, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
    release.set()
    thread.join(30)
    assert not taken
