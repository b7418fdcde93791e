"""Every on-disk store ragkit keeps, in one place: where it lives, how its keys are made,
its format version, and the one atomic writer all of them use.

The stores, under ``settings.cache_dir()`` (``$RAGKIT_CACHE_DIR``, else ``~/.cache/ragkit``):

- ``chroma/``: Chroma indexes, one folder per corpus, embedder and splitting
  (``ragkit.retrievers`` builds and verifies them);
- ``runs/``: first-stage runs, the top hits of every query;
- ``pair_scores.sqlite``: cross-encoder scores of (query, passage) pairs;
- ``latency/``: per-query timings, reused only on the same machine and software;
- ``results/``: whole evaluation results, reused when an identical call comes again.

Nothing read back is trusted. Stores hold data formats only (JSON, SQLite, Chroma's own
files), never pickles. Every JSON record carries its store, format, key and a sha256 of its
content, and the caller's own check of what it claims to be (which queries, how deep); a
record that fails any of these is logged with its path, deleted and recomputed, and so is a
path of the wrong kind (a folder where a record file belongs, a file where a store's folder
does). A pair-score database another process holds locked is waited for, then reported,
never deleted. A write that does not fit on the disk is a :class:`DiskFullError` naming the
path and the bytes it needs, and leaves nothing half-written behind.

Example:
    >>> import tempfile
    >>> cache = Cache(Path(tempfile.mkdtemp()))
    >>> _ = cache.write("runs", "k1", [[["d1", 0.5]]])
    >>> cache.read("runs", "k1")
    [[['d1', 0.5]]]
    >>> cache.read("runs", "other key") is None
    True
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragkit.errors import CacheError, RagkitError
from ragkit.settings import cache_dir

log = logging.getLogger("ragkit")

# Format versions, one per store: bumped when what a store holds changes meaning, so that old
# entries are never mistaken for new ones (every key includes its store's version).
FORMATS = {
    # How ragkit lays out a Chroma index (records, metadata, HNSW configuration; since 3, the
    # HNSW segment saved at once and recorded with a probe in ragkit-index.json).
    "index": 3,
    # What a stored pair score is (the logit, since 4) and how score_pairs batches: scores
    # then differ in float rounding, and a cache filled the old way would make a run
    # disagree with a fresh one in the last digits.
    "scoring": 4,
    "runs": 2,
    # What a timed query includes (since 3, a scorer's prepare() is left out, as an index
    # computes it ahead: a bi-encoder's stored document vectors).
    "latency": 3,
    "results": 1,
    "rates": 1,
}

# What each store holds, for `ragkit cache`; the order is the order data flows in.
STORES = {
    "chroma": "Chroma indexes (one folder per corpus, embedder and splitting)",
    "runs": "first-stage runs (the top hits of every query)",
    "pair_scores": "cross-encoder scores of (query, passage) pairs",
    "latency": "per-query timings, per machine and software",
    "results": "whole evaluation results",
    "rates": "models' measured speeds on this machine, for run estimates",
}
_PAIR_SCORES_FILE = "pair_scores.sqlite"
# How long to wait for the pair-score database while another process holds it locked: a
# writer commits one chunk of scores at a time, so a lock held longer is a stuck or paused run.
LOCK_TIMEOUT_S = 30.0
# Stores of older ragkit versions that nothing reads any more; `ragkit cache clear` removes them.
_RETIRED = ("experiments",)


def digest(*parts: Any) -> str:
    """A short, stable digest of JSON-serialisable ``parts`` (dicts in key order).

    Example:
        >>> digest("a", {"x": 1, "y": 2}) == digest("a", {"y": 2, "x": 1})
        True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _content_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- writing files safely


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``path`` so that no reader ever sees it half-written and no two writers clobber
    each other: each writer fills its own temporary file in the same folder (named with the
    process id and a random part), flushes it to disk, then renames it over ``path``.

    Example:
        >>> target = Path(tempfile.mkdtemp()) / "a" / "b.json"
        >>> atomic_write(target, '{"ok": true}').read_text()
        '{"ok": true}'
    """
    path = Path(path)
    _make_folder(path.parent)
    if path.is_dir():
        raise RagkitError(f"Cannot write {path}: it is a folder, and a file is written there. Move it away.")
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        check_space(path.parent, len(payload), what=str(path))
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        tmp.unlink(missing_ok=True)
        raise DiskFullError(_no_space(str(path), path.parent, f"{len(payload):,}", "")) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


class DiskFullError(RagkitError):
    """A file or folder that does not fit on its disk; the message names it and the bytes it needs."""


# What the operating system says when a disk, or the user's quota on it, is full.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _free_bytes(folder: Path) -> int:
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    return shutil.disk_usage(existing).free


def _no_space(what: str, folder: Path, needed: str, fix: str) -> str:
    return (
        f"Not enough space to write {what}: it needs {needed} bytes, and {folder} has {_free_bytes(folder):,} "
        f"bytes free. Free some space there{fix}."
    )


def check_space(folder: str | Path, needed: int, *, what: str | None = None, fix: str = "") -> None:
    """Raise a :class:`DiskFullError` naming ``what`` (default: the folder) and the bytes it
    needs unless ``folder``'s disk has ``needed`` bytes free; ``fix`` adds another way out."""
    folder = Path(folder)
    if _free_bytes(folder) < needed:
        raise DiskFullError(_no_space(what or str(folder), folder, f"about {needed:,}", fix))


def _make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True)``, or a ``RagkitError`` naming the file in the way."""
    for parent in [*reversed(folder.parents), folder]:
        if parent.exists() and not parent.is_dir():
            raise RagkitError(f"Cannot write into {folder}: {parent} is a file, not a folder. Move that file away.")
    folder.mkdir(parents=True, exist_ok=True)


def check_writable(folder: str | Path, layout: dict[str, bool] | None = None) -> Path:
    """Prove that files can be written into ``folder`` before any long work, leaving nothing
    behind: a folder this check had to create is removed again. ``layout`` maps the names
    that will be written inside it to whether each is a folder: an existing entry of the
    other kind is refused now rather than after the work.

    Raises a ``RagkitError`` naming the path and the reason otherwise.

    Example:
        >>> target = Path(tempfile.mkdtemp()) / "new" / "report"
        >>> check_writable(target) == target, target.exists()
        (True, False)
    """
    folder = Path(folder)
    for parent in [*reversed(folder.parents), folder]:
        if parent.exists() and not parent.is_dir():
            raise RagkitError(
                f"Cannot write the report to {folder}: {parent} is a file, not a folder. Choose another folder "
                "with --output, or move that file away."
            )
    for name, is_folder in (layout or {}).items():
        entry = folder / name
        if is_folder and entry.exists() and not entry.is_dir():
            wrong = "is a file where the report writes a folder"
        elif not is_folder and entry.is_dir():
            wrong = "is a folder where the report writes a file"
        else:
            continue
        raise RagkitError(
            f"Cannot write the report to {folder}: {entry} {wrong}. Move it away, or choose another folder "
            "with --output."
        )
    created = []
    try:
        for parent in [*reversed(folder.parents), folder]:
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ragkit-probe-"):
            pass
    except OSError as exc:
        raise RagkitError(
            f"Cannot write the report to {folder}: {exc.strerror or exc}. "
            "Choose another folder with --output, or fix its permissions."
        ) from exc
    finally:
        for made in reversed(created):
            made.rmdir()
    return folder


_TEMP_FOLDER_PREFIX = ".ragkit-report-"


def _remove_abandoned_temp_folders(folder: Path) -> None:
    """Temporary folders of writers that died (killed mid-write): their process is gone."""
    for tmp in folder.glob(f"{_TEMP_FOLDER_PREFIX}*"):
        pid_text = tmp.name[len(_TEMP_FOLDER_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit():
            try:
                os.kill(int(pid_text), 0)
                continue  # that writer is still at work
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        elif time.time() - tmp.stat().st_mtime < 3600:
            continue  # no pid in the name (an older ragkit): leave recent ones be
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_folder(folder: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """Write a folder's files into a temporary folder inside it, then move them into place
    together: an interrupted write never leaves a half-written set that looks complete, and
    temporary folders that killed writers left behind are removed.

    ``needed``: the bytes the files will take, checked to be free before anything is written.
    A disk that fills all the same is a :class:`DiskFullError` naming the folder and the bytes;
    then, as after any failure, nothing is left behind: no temporary folder, and no folder this
    call created.

    Example:
        >>> target = Path(tempfile.mkdtemp())
        >>> with atomic_folder(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("done")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']
    """
    folder = Path(folder)
    created = [p for p in [*reversed(folder.parents), folder] if not p.exists()]
    _make_folder(folder)
    fix = ", or choose another folder (--output)"
    tmp = None
    done = False
    try:
        if needed is not None:
            check_space(folder, needed, fix=fix)
        _remove_abandoned_temp_folders(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_FOLDER_PREFIX}{os.getpid()}-", dir=folder))
        yield tmp
        items = sorted(tmp.iterdir())
        for item in items:  # all checked before any is moved: never half a set in place
            target = folder / item.name
            if item.is_dir() != target.is_dir() and (target.exists() or target.is_symlink()):
                kind = "a folder" if target.is_dir() else "a file"
                raise RagkitError(f"Cannot write {target}: {kind} of that name is in the way. Move it away.")
        for item in items:
            target = folder / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        done = True
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp else 0
        size = f"about {needed:,}" if needed is not None else f"more than the {written:,}"
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(_no_space(str(folder), folder, size, fix)) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for made in reversed(created):
                with contextlib.suppress(OSError):  # a folder someone else has filled meanwhile stays
                    made.rmdir()


# ----------------------------------------------------------------------------- the stores


class PairScoreCache:
    """Cross-encoder scores in SQLite, keyed on the model configuration and the exact pair
    text, so that changing top_n or re-running a grid never scores a pair twice.

    Scores are committed as they are computed (each :meth:`put` is one transaction), so an
    interrupted run keeps what it scored. A damaged file is detected when opened, logged with
    its path, and replaced by an empty one. A file another process holds locked is waited for
    (``timeout`` seconds) and then reported, never taken for damage: it is that process's work.

    Example:
        >>> scores = PairScoreCache(Path(tempfile.mkdtemp()) / "pair_scores.sqlite")
        >>> key = PairScoreCache.pair_key("what is bm25?", "BM25 ranks by term statistics.")
        >>> scores.put("model", {key: 0.25})
        >>> scores.get("model", [key, "unknown"])
        {...: 0.25}
        >>> scores.close()
    """

    def __init__(self, path: Path, *, timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.timeout = timeout
        _make_folder(self.path.parent)
        if self.path.is_dir():
            _discard(self.path, "a folder, not a database file")
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc) or _sqlite_code(exc) == sqlite3.SQLITE_FULL:  # not damage: the file stays
                raise self._fail(exc) from exc
            log.warning("Ignoring damaged cache file %s (%s); starting it afresh.", self.path, exc)
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as again:
                raise self._fail(again) from again

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout)
        try:
            status = db.execute("PRAGMA quick_check").fetchone()[0]
            if status != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {status}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS scores (model TEXT, pair TEXT, score REAL, PRIMARY KEY (model, pair))"
            )
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def pair_key(query: str, passage: str) -> str:
        """The key of one (query, passage) pair: a sha256 of both texts."""
        return hashlib.sha256(f"{query}\x1f{passage}".encode()).hexdigest()

    def _fail(self, exc: sqlite3.DatabaseError) -> RagkitError:
        if _is_locked(exc):
            return CacheError(
                f"The pair-score cache {self.path} is locked by another ragkit process (it stayed locked for "
                f"{self.timeout:g} s while that process writes to it). Wait for that run to finish, or stop it, "
                "and run again; nothing was deleted."
            )
        if _sqlite_code(exc) == sqlite3.SQLITE_FULL:
            return DiskFullError(
                f"The pair-score cache {self.path} cannot grow: its disk is full ({_free_bytes(self.path.parent):,} "
                "bytes free). Free some space there, or point RAGKIT_CACHE_DIR at another disk; the scores it holds "
                "were kept."
            )
        return CacheError(
            f"The pair-score cache {self.path} cannot be used ({exc}). Delete that file (or run "
            "`ragkit cache clear pair_scores`) and run again; the scores will be recomputed."
        )

    def get(self, model_key: str, keys: Sequence[str]) -> dict[str, float]:
        """The stored scores of ``keys`` under ``model_key`` (keys not stored are left out)."""
        found: dict[str, float] = {}
        try:
            for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT pair, score FROM scores WHERE model = ? AND pair IN ({marks})", [model_key, *chunk]
                )
                found.update((pair, score) for pair, score in rows if isinstance(score, float))
        except sqlite3.DatabaseError as exc:
            raise self._fail(exc) from exc
        return found

    def put(self, model_key: str, items: dict[str, float]) -> None:
        """Store scores, in one transaction."""
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                    [(model_key, k, float(v)) for k, v in items.items()],
                )
        except sqlite3.DatabaseError as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        self._db.close()


class Cache:
    """ragkit's on-disk cache: the stores (``STORES``), their paths, JSON records that are
    checked when read, and the listing, clearing and verification ``ragkit cache`` offers.

    Args:
        root: the cache folder; default ``settings.cache_dir()``.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        for parent in [*reversed(self.root.parents), self.root]:
            if parent.exists() and not parent.is_dir():
                raise CacheError(
                    f"ragkit's cache folder {self.root} cannot be used: {parent} is a file, not a folder. Move that "
                    "file away, or point RAGKIT_CACHE_DIR at a folder."
                )

    def path(self, store: str) -> Path:
        """Where a store lives: a folder, or for ``pair_scores`` the SQLite file."""
        if store not in STORES:
            raise RagkitError(f"Unknown cache store {store!r}: use one of {', '.join(STORES)}.")
        return self.root / (_PAIR_SCORES_FILE if store == "pair_scores" else store)

    def record_path(self, store: str, key: str) -> Path:
        return self.path(store) / f"{key}.json"

    def write(self, store: str, key: str, payload: Any) -> Path | None:
        """Store ``payload`` (JSON-serialisable) under ``key``, with its checksum; returns its
        path, or ``None`` (with a warning) when it does not fit on the cache's disk."""
        record = {
            "ragkit_cache": store,
            "format": FORMATS[store],
            "key": key,
            "sha256": _content_hash(payload),
            "payload": payload,
        }
        folder, path = self.path(store), self.record_path(store, key)
        if folder.exists() and not folder.is_dir():
            _discard(folder, "a file, not the store's folder")
        elif path.is_dir() or (path.exists() and not path.is_file()):
            _discard(path, "a folder, not a record file" if path.is_dir() else "not a regular file")
        try:
            return atomic_write(path, json.dumps(record))
        except DiskFullError as exc:  # the work is done and correct: it is only not kept for the next run
            log.warning("Not caching %s: %s", path, exc)
            return None

    def read(self, store: str, key: str, *, check: Callable[[Any], str | None] | None = None) -> Any | None:
        """The payload stored under ``key``, or ``None`` when there is none.

        A record that is not valid JSON, was written for another store, format or key, fails
        its checksum, or fails ``check`` (a function returning a description of what is wrong,
        or ``None``) is logged with its path, deleted, and reported as absent, so the caller
        recomputes it.
        """
        path = self.record_path(store, key)
        if not path.is_file():
            folder = self.path(store)
            if folder.exists() and not folder.is_dir():
                _discard(folder, "a file, not the store's folder")
            elif path.exists() or path.is_symlink():
                _discard(path, "a folder, not a record file" if path.is_dir() else "not a regular file")
            return None
        problem = _record_problem(path, store, key)
        payload = None
        if problem is None:
            payload = json.loads(path.read_text())["payload"]
            if check is not None:
                try:
                    problem = check(payload)
                except Exception as exc:  # noqa: BLE001 - any failure means the record is not what it claims
                    problem = f"unexpected content ({type(exc).__name__}: {exc})"
        if problem is not None:
            _discard(path, problem)
            return None
        return payload

    def pair_scores(self, *, timeout: float = LOCK_TIMEOUT_S) -> PairScoreCache:
        """The pair-score store, opened (close it when done); ``timeout``: seconds to wait while
        another process holds it locked."""
        return PairScoreCache(self.path("pair_scores"), timeout=timeout)

    # -- listing, clearing, verifying

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Per store: how many files it holds and their bytes."""
        out = {}
        for store in STORES:
            path = self.path(store)
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []
            out[store] = (len(files), sum(f.stat().st_size for f in files))
        return out

    def clear(self, store: str | None = None) -> list[Path]:
        """Delete one store, or every store (and those of older ragkit versions); returns what
        was removed."""
        names = [store] if store else [*STORES, *_RETIRED]
        removed = []
        for name in names:
            path = self.path(name) if name in STORES else self.root / name
            targets = (
                [Path(f"{path}{s}") for s in ("", "-journal", "-wal", "-shm")] if name == "pair_scores" else [path]
            )
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                else:
                    continue
                removed.append(target)
        return removed

    def verify(self) -> list[tuple[Path, str]]:
        """Check every JSON record and the pair-score database without changing anything;
        returns ``(path, problem)`` for each that would be recomputed. (Chroma indexes are
        verified by ``ragkit.retrievers.verify_index``.)"""
        problems = []
        for store in ("runs", "latency", "results"):
            folder = self.path(store)
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                problem = _record_problem(path, store, path.stem)
                if problem:
                    problems.append((path, problem))
        db_path = self.path("pair_scores")
        if db_path.is_file():
            try:
                db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
                try:
                    status = db.execute("PRAGMA quick_check").fetchone()[0]
                finally:
                    db.close()
                if status != "ok":
                    problems.append((db_path, f"integrity check: {status}"))
            except sqlite3.DatabaseError as exc:
                problems.append((db_path, str(exc)))
        return problems


def _sqlite_code(exc: sqlite3.DatabaseError) -> int | None:
    """SQLite's primary result code of an error (``SQLITE_BUSY``, ``SQLITE_FULL``...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_locked(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (busy), not found damage."""
    code = _sqlite_code(exc)
    if code is not None:
        return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _discard(path: Path, problem: str) -> None:
    """Remove a cache path that is not what the cache keeps there, so that it is recomputed."""
    log.warning("Ignoring damaged cache file %s (%s); recomputing it.", path, problem)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _record_problem(path: Path, store: str, key: str) -> str | None:
    """What is wrong with a JSON record, or ``None`` when it is what it claims to be."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not readable JSON: {exc}"
    if not isinstance(record, dict) or not {"ragkit_cache", "format", "key", "sha256", "payload"} <= record.keys():
        return "not a ragkit cache record"
    if record["ragkit_cache"] != store or record["key"] != key:
        return f"written as {record['ragkit_cache']!r} record {record['key']!r}, found as {store!r} record {key!r}"
    if record["format"] != FORMATS[store]:
        return f"format {record['format']!r}, expected {FORMATS[store]}"
    if record["sha256"] != _content_hash(record["payload"]):
        return "content does not match its checksum"
    return None
