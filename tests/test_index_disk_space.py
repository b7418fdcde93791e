"""A disk too full for an index is a ``CacheError`` naming the folder and the space needed
(an estimate), and leaves no half-written index behind: refused before anything is added
when the free space is short already, cleaned up when the disk fills during the build.

The full disk is simulated at the two points where ragkit meets it: ``shutil.disk_usage``
reporting almost no free space, and Chroma's add failing as it does on a full disk (an
``OSError`` of ENOSPC, or Chroma's ``InternalError`` with SQLite's words) after it has
written what it could.
"""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from test_index_integrity import N_DOCS, QUERIES, RandomEmbeddings, close, exact_top_k, make_docs

from ragkit.errors import CacheError
from ragkit.retrievers import build_chroma_index, verify_index
from ragkit.settings import INDEX_BATCH_SIZE

Usage = namedtuple("Usage", "total used free")
REAL_DISK_USAGE = shutil.disk_usage


def _real_upsert():
    from chromadb.api.models.Collection import Collection

    return Collection.upsert


REAL_UPSERT = _real_upsert()


def nearly_full(monkeypatch, free: int = 1_000_000) -> None:
    real = shutil.disk_usage

    def usage(path):
        got = real(path)
        return Usage(got.total, got.total - free, free)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def failing_adds(monkeypatch, error: Exception) -> None:
    """Chroma's add writes what it can, then fails as on a full disk."""
    from chromadb.api.models.Collection import Collection

    real = Collection.upsert

    def upsert(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise error

    monkeypatch.setattr(Collection, "upsert", upsert)


def restore(monkeypatch) -> None:
    """Undo the simulated full disk, but keep this test's cache (RAGKIT_CACHE_DIR)."""
    from chromadb.api.models.Collection import Collection

    monkeypatch.setattr(shutil, "disk_usage", REAL_DISK_USAGE)
    monkeypatch.setattr(Collection, "upsert", REAL_UPSERT)


def chroma_folders(cache: Path) -> list[Path]:
    root = cache / "chroma"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_too_little_free_space_is_refused_before_anything_is_added(cache, monkeypatch):
    nearly_full(monkeypatch)
    emb = RandomEmbeddings()
    with pytest.raises(CacheError) as caught:
        build_chroma_index(make_docs(), emb, show_progress=False)
    message = str(caught.value)
    assert str(cache / "chroma") in message and "Not enough disk space" in message
    assert "estimate" in message and "bytes" in message and "free" in message
    assert chroma_folders(cache) == []  # no half-written index folder
    assert emb.texts <= INDEX_BATCH_SIZE  # refused after the first batch told the dimension
    restore(monkeypatch)
    index = build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    assert [[d for d, _ in hits] for hits in index.search(QUERIES, 10)] == exact_top_k()


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), "internal"],
    ids=["ENOSPC", "chroma-internal-error"],
)
def test_disk_full_while_adding_deletes_the_half_written_index(cache, monkeypatch, error):
    if error == "internal":
        from chromadb.errors import InternalError

        error = InternalError("Error executing plan: Error committing transaction: database or disk is full")
    failing_adds(monkeypatch, error)
    with pytest.raises(CacheError) as caught:
        build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    message = str(caught.value)
    assert str(cache / "chroma") in message
    assert "Not enough disk space" in message and "estimate" in message and "deleted" in message
    assert chroma_folders(cache) == []
    restore(monkeypatch)
    emb = RandomEmbeddings()
    index = build_chroma_index(make_docs(), emb, show_progress=False)  # from scratch, nothing stale reused
    assert emb.texts == N_DOCS and index.persist_directory.parent == cache / "chroma"


def test_disk_full_while_rebuilding_a_damaged_index_deletes_it(cache, monkeypatch):
    index = build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    directory = index.persist_directory
    close(index)
    (directory / "ragkit-index.json").unlink()  # damaged: rebuilt on the next call
    failing_adds(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CacheError, match="Not enough disk space") as caught:
        build_chroma_index(make_docs(), RandomEmbeddings(), show_progress=False)
    assert str(directory) in str(caught.value)
    assert not directory.exists()


def test_disk_full_in_a_folder_holding_another_index_keeps_that_index(tmp_path, monkeypatch):
    folder = tmp_path / "my-index"
    close(build_chroma_index(make_docs(), RandomEmbeddings(), persist_directory=folder, show_progress=False))
    failing_adds(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(CacheError, match="Not enough disk space") as caught:
        build_chroma_index(
            make_docs(300), RandomEmbeddings(), persist_directory=folder, collection_name="second", show_progress=False
        )
    assert str(folder) in str(caught.value) and "kept" in str(caught.value)
    restore(monkeypatch)
    assert verify_index(folder) == []  # the index it held before is untouched


def test_a_fresh_folder_you_chose_is_removed_when_the_disk_is_full(tmp_path, monkeypatch):
    nearly_full(monkeypatch)
    folder = tmp_path / "new" / "index"
    with pytest.raises(CacheError, match="Not enough disk space") as caught:
        build_chroma_index(make_docs(), RandomEmbeddings(), persist_directory=folder, show_progress=False)
    assert str(folder) in str(caught.value)
    assert not folder.exists()
