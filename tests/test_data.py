"""ragkit.data: loading BEIR collections, validating them, downloading safely, cutting subsets.

SciFact and NFCorpus come from the read-only copies named by RAGKIT_BEIR_DIR (default
``../shared/beir``); every other collection here is a small fixture written by the test.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import socket
import stat
import threading
import time
import warnings
import zipfile
from pathlib import Path

import ir_measures
import pytest

from ragkit.bm25 import BM25Index
from ragkit.data import (
    BeirCollection,
    Doc,
    _fetch_from_hub,
    download_beir,
    load_beir,
    make_subset,
    manifest,
)
from ragkit.errors import DataError, RagkitError
from ragkit.settings import (
    BEIR_DIR_ENV,
    BEIR_MIRROR_ENV,
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DEFAULT_SUBSET_DOCS,
    DEFAULT_SUBSET_QUERIES,
    OFFLINE_ENV,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BEIR = Path(os.environ.get(BEIR_DIR_ENV) or REPO_ROOT.parent / "shared" / "beir")
needs_shared = pytest.mark.skipif(
    not (SHARED_BEIR / "scifact" / "corpus.jsonl").is_file(),
    reason=f"the shared BEIR copies are not at {SHARED_BEIR}; set {BEIR_DIR_ENV}",
)
# sha256 of SciFact's corpus as ragkit.data fingerprints it; indexes are cached under this
# value, so a change to the fingerprint definition must be deliberate.
SCIFACT_FINGERPRINT = "2a361dc6474d"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Downloads land in the test's own folder and no mirror or offline flag leaks in."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    for variable in (BEIR_MIRROR_ENV, OFFLINE_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def scifact() -> BeirCollection:
    if not (SHARED_BEIR / "scifact").is_dir():
        pytest.skip(f"no SciFact under {SHARED_BEIR}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BEIR_DIR_ENV, str(SHARED_BEIR))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the official files must load without a single warning
            return load_beir("scifact")


@pytest.fixture(scope="module")
def nfcorpus() -> BeirCollection:
    if not (SHARED_BEIR / "nfcorpus").is_dir():
        pytest.skip(f"no NFCorpus under {SHARED_BEIR}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BEIR_DIR_ENV, str(SHARED_BEIR))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return load_beir("nfcorpus")


@pytest.fixture(scope="module")
def scifact_bm25(scifact) -> BM25Index:
    doc_ids = sorted(scifact.corpus)
    return BM25Index.from_texts(doc_ids, [scifact.text(doc_id) for doc_id in doc_ids])


# --------------------------------------------------------------------------------------------
# Helpers that write small collections


CORPUS = [
    {"_id": "d1", "title": "Chroma", "text": "Chroma stores vectors on disk."},
    {"_id": "d2", "title": "", "text": "BM25 weights rare terms."},
    {"_id": "d3", "title": "Rerankers", "text": "Cross-encoders rescore a shortlist."},
]
QUERIES = [
    {"_id": "q1", "text": "Where are vectors kept?"},
    {"_id": "q2", "text": "What does a reranker do?"},
    {"_id": "q9", "text": "A training query, judged only in train.tsv."},
]
QRELS = [("q1", "d1", 2), ("q2", "d3", 1), ("q2", "d2", 0)]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def qrels_tsv(rows: list[tuple], header: bool = True) -> str:
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + ["\t".join(map(str, row)) for row in rows]
    return "".join(line + "\n" for line in lines)


def write_collection(
    folder: Path,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: str | None = None,
    newline: str = "\n",
) -> Path:
    """A BEIR folder with the default small collection, any file replaceable by raw text."""
    files = {
        "corpus.jsonl": jsonl(CORPUS) if corpus is None else corpus,
        "queries.jsonl": jsonl(QUERIES) if queries is None else queries,
        "qrels/test.tsv": qrels_tsv(QRELS) if qrels is None else qrels,
        "qrels/train.tsv": qrels_tsv([("q9", "d1", 1)]),
    }
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return folder


def zip_bytes(entries: dict[str, str | bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(zipfile.ZipInfo(name), content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def collection_zip(name: str, replacements: dict[str, str] | None = None) -> bytes:
    """The small collection zipped the way BEIR zips are laid out: ``<name>/corpus.jsonl`` ..."""
    files = {
        "corpus.jsonl": jsonl(CORPUS),
        "queries.jsonl": jsonl(QUERIES),
        "qrels/test.tsv": qrels_tsv(QRELS),
        **(replacements or {}),
    }
    return zip_bytes({f"{name}/{path}": text for path, text in files.items()})


def leftovers(root: Path) -> list[str]:
    """Everything under ``root``: after a rejected download this must be empty."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------
# The official collections


@needs_shared
def test_scifact_has_the_official_counts(scifact):
    assert (len(scifact.corpus), len(scifact.queries), scifact.n_judgements) == (5183, 300, 339)
    assert scifact.grades == (1,)
    assert scifact.source == SHARED_BEIR / "scifact"
    assert not scifact.is_subset and scifact.subset is None


@needs_shared
def test_nfcorpus_has_the_official_counts(nfcorpus):
    assert (len(nfcorpus.corpus), len(nfcorpus.queries), nfcorpus.n_judgements) == (3633, 323, 12334)
    assert nfcorpus.grades == (1, 2)


@needs_shared
@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_every_judgement_resolves(name, request):
    collection = request.getfixturevalue(name)
    assert set(collection.queries) == set(collection.qrels)
    for docs in collection.qrels.values():
        assert docs and set(docs) <= collection.corpus.keys()


@needs_shared
def test_manifest_holds_the_official_counts(scifact, nfcorpus):
    for collection in (scifact, nfcorpus):
        info = manifest()["collections"][collection.name]
        split = info["splits"]["test"]
        assert info["docs"] == len(collection.corpus)
        assert split["queries"] == len(collection.queries)
        assert split["qrels"] == collection.n_judgements
        assert split["grades"] == list(collection.grades)


def test_data_card_agrees_with_the_manifest():
    card = (REPO_ROOT / "data" / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in card.splitlines() if line.startswith("| `")}
    for name, info in manifest()["collections"].items():
        assert name in rows, f"data/README.md has no row for {name}"
        cells = [cell.strip() for cell in rows[name].split("|")]
        split = info["splits"][info["eval_split"]]
        assert cells[3] == f"{info['docs']:,}", name
        assert cells[5] == f"{split['queries']:,}", name
        assert cells[6] == ("–" if split["qrels"] is None else f"{split['qrels']:,}"), name
        assert (info["zip_md5"] or "–") in cells[8], name


@needs_shared
def test_fingerprint_is_stable_and_follows_content(scifact, tmp_path):
    assert scifact.fingerprint().startswith(SCIFACT_FINGERPRINT)
    reloaded = load_beir(SHARED_BEIR / "scifact")
    assert reloaded.fingerprint() == scifact.fingerprint()

    folder = write_collection(tmp_path / "a")
    shuffled = write_collection(tmp_path / "b", corpus=jsonl(CORPUS[::-1]))
    edited = write_collection(tmp_path / "c", corpus=jsonl([*CORPUS[:2], {**CORPUS[2], "text": "Changed."}]))
    assert load_beir(folder).fingerprint() == load_beir(shuffled).fingerprint()
    assert load_beir(folder).fingerprint() != load_beir(edited).fingerprint()


@needs_shared
def test_qrels_list_gives_ir_measures_qrels(scifact):
    qrels = scifact.qrels_list()
    assert len(qrels) == 339
    assert all(isinstance(qrel, ir_measures.Qrel) and qrel.relevance == 1 for qrel in qrels)
    assert {qrel.query_id for qrel in qrels} == set(scifact.queries)


# --------------------------------------------------------------------------------------------
# Text, documents, CRLF


def test_text_joins_title_and_text_the_beir_way(tmp_path):
    collection = load_beir(write_collection(tmp_path / "small"))
    assert collection.text("d1") == "Chroma Chroma stores vectors on disk."
    assert collection.text("d2") == "BM25 weights rare terms."  # empty title: no leading space
    documents = {doc.metadata["doc_id"]: doc for doc in collection.documents()}
    assert list(documents) == ["d1", "d2", "d3"]
    for doc_id, document in documents.items():
        assert document.page_content == collection.text(doc_id)
        assert document.metadata == {"doc_id": doc_id, "title": collection.corpus[doc_id].title}


@needs_shared
def test_scifact_documents_use_the_same_join(scifact):
    doc_id = next(iter(scifact.corpus))
    doc = scifact.corpus[doc_id]
    assert scifact.documents()[0].page_content == (doc.title + " " + doc.text).strip() == scifact.text(doc_id)


def test_only_the_split_s_queries_are_kept(tmp_path):
    folder = write_collection(tmp_path / "small")
    test = load_beir(folder)
    train = load_beir(folder, "train")
    assert list(test.queries) == ["q1", "q2"]
    assert test.qrels == {"q1": {"d1": 2}, "q2": {"d3": 1, "d2": 0}}
    assert list(train.queries) == ["q9"] and train.split == "train"


def test_crlf_files_load_like_lf_files(tmp_path):
    lf = load_beir(write_collection(tmp_path / "lf"))
    crlf = load_beir(write_collection(tmp_path / "crlf", newline="\r\n"))
    assert (tmp_path / "crlf" / "qrels" / "test.tsv").read_bytes().count(b"\r\n") == 4
    assert crlf.qrels == lf.qrels
    assert crlf.queries == lf.queries
    assert crlf.corpus == lf.corpus


def test_ids_are_strings_even_when_written_as_numbers(tmp_path):
    corpus = jsonl([{"_id": 7, "title": "", "text": "seven"}])
    queries = jsonl([{"_id": 1, "text": "which number?"}])
    folder = write_collection(tmp_path / "n", corpus=corpus, queries=queries, qrels=qrels_tsv([(1, 7, 1)]))
    collection = load_beir(folder)
    assert collection.qrels == {"1": {"7": 1}} and collection.corpus == {"7": Doc("", "seven")}


# --------------------------------------------------------------------------------------------
# Validation: a clear error naming file and line, nothing partial


def test_missing_file_is_named(tmp_path):
    folder = write_collection(tmp_path / "small")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"corpus\.jsonl missing.*re-download"):
        load_beir(folder)


def test_missing_split_lists_the_available_ones(tmp_path):
    folder = write_collection(tmp_path / "small")
    with pytest.raises(
        DataError, match=r"no judgements for split 'dev'.*available splits: test, train.*split="
    ) as error:
        load_beir(folder, "dev")
    assert str(folder / "qrels" / "dev.tsv") in str(error.value)


@pytest.mark.parametrize(
    ("file", "content", "pattern"),
    [
        (
            "corpus",
            jsonl(CORPUS[:2]) + '{"_id": "d3", "text": "unterminated\n',
            r"corpus\.jsonl, line 3: not valid JSON.*Expected one JSON object per line",
        ),
        (
            "corpus",
            jsonl(CORPUS[:1]) + '["d2", "a list"]\n' + jsonl(CORPUS[2:]),
            r"corpus\.jsonl, line 2: a JSON list, not an object",
        ),
        (
            "corpus",
            jsonl([CORPUS[0], {"title": "t", "text": "no id"}, CORPUS[2]]),
            r"corpus\.jsonl, line 2: no \"_id\" field.*unique",
        ),
        (
            "corpus",
            jsonl([CORPUS[0], {"_id": "d2", "title": "no text"}, CORPUS[2]]),
            r"corpus\.jsonl, line 2: \"text\" must be a string; found no such field",
        ),
        (
            "corpus",
            jsonl([CORPUS[0], {"_id": "d2", "text": 42}, CORPUS[2]]),
            r"corpus\.jsonl, line 2: \"text\" must be a string; found int 42",
        ),
        ("corpus", jsonl([CORPUS[0], {"_id": "", "text": "x"}, CORPUS[2]]), r"corpus\.jsonl, line 2: \"_id\" is ''"),
        (
            "corpus",
            jsonl([*CORPUS, CORPUS[1]]),
            r"corpus\.jsonl, line 4: duplicate \"_id\" 'd2', already used on line 2",
        ),
        (
            "queries",
            jsonl([*QUERIES[:2], {"_id": "q1", "text": "again"}]),
            r"queries\.jsonl, line 3: duplicate \"_id\" 'q1', already used on line 1",
        ),
        ("queries", jsonl([QUERIES[0], {"_id": "q2"}]), r"queries\.jsonl, line 2: \"text\" must be a string"),
        (
            "qrels",
            qrels_tsv([("q1", "d1", 2), ("q2", "d3", "high")]),
            r"test\.tsv, line 3: score 'high' is not an integer.*0, 1 or 2",
        ),
        (
            "qrels",
            qrels_tsv([("q1", "d1", 2), ("q2", "d3", "1.5")]),
            r"test\.tsv, line 3: score '1\.5' is not an integer",
        ),
        (
            "qrels",
            qrels_tsv([("q1", "d1", 2), ("q2", "d3", 1, "extra")]),
            r"test\.tsv, line 3: 4 tab-separated column\(s\).*expected 3",
        ),
        ("qrels", qrels_tsv([("q1", "d1", 2)]) + "q2 d3 1\n", r"test\.tsv, line 3: 1 tab-separated column\(s\).*tabs"),
        (
            "qrels",
            qrels_tsv([("q1", "d1", 2), ("q1", "d1", 1)]),
            r"test\.tsv, line 3: \(q1, d1\) graded 1, but 2 on line 2",
        ),
        ("qrels", qrels_tsv([]), r"test\.tsv holds no judgements, so the split has no queries"),
        (
            "qrels",
            qrels_tsv([("q7", "d8", 1), ("q1", "d9", 1)]),
            r"none of its 2 judgements matches.*1 query id\(s\).*'q7'.*2 doc id\(s\)",
        ),
    ],
)
def test_malformed_input_is_reported_with_file_and_line(tmp_path, file, content, pattern):
    folder = write_collection(tmp_path / "bad", **{file: content})
    with pytest.raises(DataError, match=pattern) as error:
        load_beir(folder)
    assert str(folder) in str(error.value)


def test_not_utf8_is_reported(tmp_path):
    folder = write_collection(tmp_path / "bad")
    latin1_line = '{"_id": "q2", "text": "caf\u00e9"}\n'.encode("latin-1")
    (folder / "queries.jsonl").write_bytes(jsonl(QUERIES[:1]).encode() + latin1_line)
    with pytest.raises(DataError, match=r"queries\.jsonl, line 2: not UTF-8"):
        load_beir(folder)


def test_dangling_judgements_are_counted_dropped_and_warned_about(tmp_path):
    rows = [*QRELS, ("q1", "d404", 1), ("q404", "d1", 1), ("q404", "d2", 1)]
    folder = write_collection(tmp_path / "dangling", qrels=qrels_tsv(rows))
    with pytest.warns(
        UserWarning, match=r"dropped 3 of 6 judgements naming 1 query id\(s\).*'q404'.*1 doc id\(s\).*'d404'"
    ):
        collection = load_beir(folder)
    assert collection.qrels == {"q1": {"d1": 2}, "q2": {"d3": 1, "d2": 0}}
    assert list(collection.queries) == ["q1", "q2"]


def test_data_error_is_a_ragkit_error():
    assert issubclass(DataError, RagkitError)


def test_unknown_name_lists_known_names(tmp_path, monkeypatch):
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"'no-such-set' is neither a known collection nor a folder.*scifact"):
        load_beir("no-such-set")


def test_local_copy_that_differs_from_the_official_counts_warns(tmp_path, monkeypatch):
    write_collection(tmp_path / "beir" / "scifact")
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "beir"))
    with pytest.warns(UserWarning, match=r"differs from the official scifact test split: 3 docs \(official 5,183\)"):
        load_beir("scifact")


# --------------------------------------------------------------------------------------------
# The demo corpus


def test_demo_loads_from_the_package_whatever_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        demo = load_beir("demo")
    assert (len(demo.corpus), len(demo.queries), demo.n_judgements) == (40, 8, 35)
    assert demo.grades == (0, 1, 2)
    assert set(demo.queries) == set(demo.qrels)
    assert all(set(docs) <= demo.corpus.keys() and 2 in docs.values() for docs in demo.qrels.values())
    assert demo.source.parent.name == "ragkit"


def test_demo_has_a_lexical_trap_for_reranking_to_fix():
    demo = load_beir("demo")
    doc_ids = list(demo.corpus)
    index = BM25Index.from_texts(doc_ids, [demo.text(doc_id) for doc_id in doc_ids])
    ranking = [doc_id for doc_id, _ in index.search([demo.queries["q1"]], k=len(doc_ids))[0]]
    judged = demo.qrels["q1"]
    trap, answer = "d09", "d17"
    assert judged[trap] == 0 and judged[answer] == 2
    assert trap in ranking and (answer not in ranking or ranking.index(trap) < ranking.index(answer))


# --------------------------------------------------------------------------------------------
# Subsets


@needs_shared
def test_subset_is_reproducible_and_depends_on_the_seed(scifact, scifact_bm25):
    first = make_subset(scifact, 20, seed=0, n_docs=300, index=scifact_bm25)
    again = make_subset(scifact, 20, seed=0, n_docs=300)  # builds its own BM25 index
    other = make_subset(scifact, 20, seed=1, n_docs=300, index=scifact_bm25)
    assert first.name == again.name == "scifact-subset-q20-s0-d300"
    assert first.fingerprint() == again.fingerprint()
    assert (first.queries, first.qrels, first.subset) == (again.queries, again.qrels, again.subset)
    assert other.name == "scifact-subset-q20-s1-d300"
    assert set(other.queries) != set(first.queries)
    assert other.fingerprint() != first.fingerprint()


@needs_shared
def test_subset_keeps_judged_docs_and_adds_hard_negatives(scifact, scifact_bm25):
    subset = make_subset(scifact, DEFAULT_SUBSET_QUERIES, index=scifact_bm25)
    info = subset.subset
    assert subset.name == f"scifact-subset-q{DEFAULT_SUBSET_QUERIES}-s0-d{DEFAULT_SUBSET_DOCS}"
    assert len(subset.queries) == DEFAULT_SUBSET_QUERIES and len(subset.corpus) == DEFAULT_SUBSET_DOCS
    assert set(subset.queries) <= set(scifact.queries) and subset.qrels == {q: scifact.qrels[q] for q in subset.queries}
    judged = {doc_id for docs in subset.qrels.values() for doc_id in docs}
    assert judged <= subset.corpus.keys() and info.n_judged_docs == len(judged)
    assert all(subset.corpus[doc_id] == scifact.corpus[doc_id] for doc_id in subset.corpus)

    top = scifact_bm25.search([subset.queries[q] for q in subset.queries], k=3)
    for query_id, hits in zip(subset.queries, top):
        unjudged = [doc_id for doc_id, _ in hits if doc_id not in subset.qrels[query_id]]
        assert set(unjudged) <= subset.corpus.keys(), f"top BM25 hits of {query_id} are missing"
    assert info.n_hard_negatives > DEFAULT_SUBSET_QUERIES
    assert info.parent == "scifact" and info.parent_fingerprint == scifact.fingerprint()
    assert info.n_docs == len(subset.corpus) and info.seed == 0


@needs_shared
def test_subset_says_it_is_not_the_official_split(scifact, scifact_bm25):
    subset = make_subset(scifact, 5, n_docs=50, index=scifact_bm25)
    assert subset.is_subset
    assert "ragkit subset, not the official split; do not compare with full-split scores" in subset.summary()
    assert "ragkit subset of scifact" in repr(subset)
    assert "ragkit subset" not in scifact.summary() + repr(scifact)


@needs_shared
def test_judged_docs_are_kept_beyond_the_target_size(nfcorpus):
    subset = make_subset(nfcorpus, 10, n_docs=50, hard_negatives_per_query=3)
    judged = {doc_id for docs in subset.qrels.values() for doc_id in docs}
    assert len(judged) > 50
    assert subset.corpus.keys() == judged
    assert subset.subset.n_hard_negatives == 0 and subset.subset.target_docs == 50


def test_subset_without_hard_negatives_fills_with_random_docs():
    demo = load_beir("demo")
    subset = make_subset(demo, 2, n_docs=20, hard_negatives_per_query=0)
    assert len(subset.corpus) == 20 and subset.subset.n_hard_negatives == 0


def test_subset_arguments_are_checked(tmp_path):
    demo = load_beir("demo")
    with pytest.raises(ValueError, match="between 1 and 8"):
        make_subset(demo, 9)
    with pytest.raises(ValueError, match="n_docs must be at least 1"):
        make_subset(demo, 2, n_docs=0)
    small = load_beir(write_collection(tmp_path / "small"))
    wrong_index = BM25Index.from_texts(["x"], ["unrelated text"])
    with pytest.raises(ValueError, match="does not cover exactly"):
        make_subset(small, 1, index=wrong_index)


# --------------------------------------------------------------------------------------------
# Downloading: checked, safe, atomic


def test_download_over_http_lands_in_place(http_root, tmp_path):
    served, base = http_root
    payload = collection_zip("tiny")
    (served / "tiny.zip").write_bytes(payload)
    root = tmp_path / "beir"

    folder = download_beir("tiny", url=f"{base}/tiny.zip", md5=hashlib.md5(payload).hexdigest(), root=root)

    assert folder == root / "tiny"
    assert leftovers(root) == ["tiny", "tiny/corpus.jsonl", "tiny/qrels", "tiny/qrels/test.tsv", "tiny/queries.jsonl"]
    assert load_beir(folder).qrels == {"q1": {"d1": 2}, "q2": {"d3": 1, "d2": 0}}
    assert download_beir("tiny", url=f"{base}/gone.zip", root=root) == folder  # already there: no download


def test_download_from_a_file_url(tmp_path):
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(collection_zip("tiny"))
    folder = download_beir("tiny", url=archive.as_uri(), root=tmp_path / "beir")
    assert len(load_beir(folder).corpus) == 3


def test_load_beir_downloads_from_the_mirror_and_rejects_a_wrong_md5(http_root, tmp_path, monkeypatch):
    served, base = http_root
    (served / "scifact.zip").write_bytes(collection_zip("scifact"))  # not the official zip
    monkeypatch.setenv(BEIR_MIRROR_ENV, base)
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(
        DataError, match=r"scifact\.zip: md5 [0-9a-f]{32} does not match the published 5f7d1de6"
    ) as error:
        load_beir("scifact")

    assert "Hugging Face Hub: skipped, HF_HUB_OFFLINE=1" in str(error.value)
    assert leftovers(tmp_path / "data") == ["beir"]


@pytest.mark.parametrize(
    ("entries", "symlinks", "pattern"),
    [
        ({"tiny/corpus.jsonl": "{}", "../evil.txt": "pwned"}, None, r"'\.\./evil\.txt' points outside its folder"),
        ({"tiny/corpus.jsonl": "{}", "tiny/../../evil.txt": "pwned"}, None, r"points outside its folder"),
        ({"/tmp/evil.txt": "pwned"}, None, r"'/tmp/evil\.txt' points outside its folder"),
        (
            {"tiny/corpus.jsonl": "{}"},
            {"tiny/queries.jsonl": "../../../evil.txt"},
            r"'tiny/queries\.jsonl' is a symbolic link",
        ),
    ],
)
def test_unsafe_archives_are_rejected_whole(http_root, tmp_path, entries, symlinks, pattern):
    served, base = http_root
    (served / "tiny.zip").write_bytes(zip_bytes(entries, symlinks))
    root = tmp_path / "beir"
    with pytest.raises(DataError, match=pattern):
        download_beir("tiny", url=f"{base}/tiny.zip", root=root)
    assert leftovers(root) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_bad_checksum_leaves_nothing(http_root, tmp_path):
    served, base = http_root
    (served / "tiny.zip").write_bytes(collection_zip("tiny"))
    root = tmp_path / "beir"
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32} does not match the published 0{32}.*Nothing was kept"):
        download_beir("tiny", url=f"{base}/tiny.zip", md5="0" * 32, root=root)
    assert leftovers(root) == []


def test_malformed_download_leaves_nothing(http_root, tmp_path):
    served, base = http_root
    (served / "tiny.zip").write_bytes(
        collection_zip("tiny", {"corpus.jsonl": '{"_id": "d1", "text": "ok"}\n{broken\n'})
    )
    root = tmp_path / "beir"
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 2: not valid JSON"):
        download_beir("tiny", url=f"{base}/tiny.zip", root=root)
    assert leftovers(root) == []


def test_interrupted_download_leaves_nothing(tmp_path):
    payload = collection_zip("tiny")

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])  # then the connection drops

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    root = tmp_path / "beir"
    try:
        with pytest.raises(DataError, match=r"download stopped after \d+ of \d+ bytes"):
            download_beir("tiny", url=f"http://127.0.0.1:{server.server_address[1]}/tiny.zip", root=root)
    finally:
        server.shutdown()
        server.server_close()
    assert leftovers(root) == []


def test_hub_copies_are_rewritten_in_beir_layout(tmp_path, monkeypatch):
    """The Hub fallback, run through `datasets` on local folders laid out like BeIR/<name> and BeIR/<name>-qrels."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    repo, qrels_repo = tmp_path / "BeIR" / "tiny", tmp_path / "BeIR" / "tiny-qrels"
    configs = "".join(
        f"- config_name: {part}\n  data_files:\n  - split: {part}\n    path: {part}/*\n"
        for part in ("corpus", "queries")
    )
    files = {
        repo / "README.md": f"---\nconfigs:\n{configs}---\n",
        repo / "corpus" / "corpus.jsonl": jsonl(
            [{"_id": "007", "title": None, "text": "zeros"}, {**CORPUS[0], "_id": "8"}]
        ),
        repo / "queries" / "queries.jsonl": jsonl([{"_id": "1", "text": "which?"}, {"_id": "2", "text": "train"}]),
        qrels_repo / "test.tsv": qrels_tsv([(1, "007", 2), (1, 8, 0)]),
        qrels_repo / "train.tsv": qrels_tsv([(2, 8, 1)]),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    folder = tmp_path / "beir" / "tiny"
    _fetch_from_hub(str(repo), str(qrels_repo), folder)

    test, train = load_beir(folder), load_beir(folder, "train")
    assert test.qrels == {"1": {"007": 2, "8": 0}} and train.qrels == {"2": {"8": 1}}
    assert test.text("007") == "zeros" and test.text("8") == "Chroma Chroma stores vectors on disk."
    assert (folder / "qrels" / "test.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")


# --------------------------------------------------------------------------------------------
# Offline: a clear error at once, never a network timeout


def assert_fast_offline_error(call, name: str, data_dir: Path) -> str:
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        call()
    elapsed = time.perf_counter() - start
    message = str(error.value)
    # At most one 0.8 s reachability probe; a download would wait 60 s. The margin is for a busy CI machine.
    assert elapsed < 5.0, f"the offline error took {elapsed:.2f} s"
    assert BEIR_DIR_ENV in message, message
    assert str(data_dir / "beir" / name) in message, message
    return message


def test_offline_flag_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    message = assert_fast_offline_error(lambda: load_beir("fiqa"), "fiqa", tmp_path / "data")
    assert f"{OFFLINE_ENV}=1 is set" in message
    assert leftovers(tmp_path / "data") == []


def test_downloads_default_to_the_cache_never_the_working_directory(tmp_path, monkeypatch):
    """Without $RAGKIT_DATA_DIR a collection is looked for in $RAGKIT_BEIR_DIR, then in the cache's
    beir/ folder, where a download would land; the error names both and what to set."""
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "shared"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    (tmp_path / "cwd" / "data" / "beir").mkdir(parents=True)
    write_collection(tmp_path / "cwd" / "data" / "beir" / "fiqa")  # a working directory's data/ is not read
    monkeypatch.chdir(tmp_path / "cwd")

    message = assert_fast_offline_error(lambda: load_beir("fiqa"), "fiqa", tmp_path / "cache")
    assert (
        f"Looked in: {tmp_path / 'shared' / 'fiqa'} (${BEIR_DIR_ENV}), {tmp_path / 'cache' / 'beir' / 'fiqa'}"
        in message
    )
    assert "data/beir" not in message and "../shared" not in message
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["data"]
    assert not (tmp_path / "cache").exists()

    write_collection(tmp_path / "cache" / "beir" / "tiny")
    assert load_beir("tiny").source == tmp_path / "cache" / "beir" / "tiny"
    monkeypatch.delenv(BEIR_DIR_ENV)
    message = assert_fast_offline_error(lambda: load_beir("fiqa"), "fiqa", tmp_path / "cache")
    assert f"${BEIR_DIR_ENV} is not set" in message


def test_download_false_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    message = assert_fast_offline_error(lambda: load_beir("scifact", download=False), "scifact", tmp_path / "data")
    assert "download=False" in message


def test_unreachable_server_fails_within_a_second(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv(BEIR_MIRROR_ENV, f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    message = assert_fast_offline_error(lambda: load_beir("nfcorpus"), "nfcorpus", tmp_path / "data")
    assert "not reachable" in message


def test_hanging_network_is_cut_short(tmp_path, monkeypatch):
    """A connection attempt that would hang (a firewall dropping packets) still fails fast."""

    def hang(*args, **kwargs):
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setenv(BEIR_DIR_ENV, str(tmp_path / "empty"))
    message = assert_fast_offline_error(lambda: load_beir("arguana"), "arguana", tmp_path / "data")
    assert "public.ukp.informatik.tu-darmstadt.de" in message and "huggingface.co" in message
