"""Any Hub id or local folder as an embedder or reranker: what the catalogue knows is used, a
model it does not know is named in the report, and a name that cannot load is a clear error
before any work (no index built, no report folder written)."""

from __future__ import annotations

import shutil

import pytest

from ragkit.cli import main
from ragkit.errors import ConfigError, ModelNotFoundError
from ragkit.evaluate import Pipeline, experiment
from ragkit.models import check_model
from ragkit.report import markdown_summary


def test_any_hub_id_is_accepted_and_the_catalogue_says_what_it_knows():
    assert check_model("BAAI/bge-small-en-v1.5", "embedder", offline=False).query_instruction
    assert check_model("intfloat/e5-small-v2", "embedder", offline=False) is None  # not catalogued, still fine
    with pytest.raises(ConfigError, match="is an embedder in ragkit's catalogue, not a cross-encoder"):
        check_model("BAAI/bge-small-en-v1.5", "cross-encoder", offline=False)
    with pytest.raises(ConfigError, match="neither a folder on this machine nor a Hugging Face Hub id"):
        check_model("no such model!", "embedder", offline=False)
    # The Hub and its cache first, which an installed package has; the repository's tool after.
    hub_first = (
        r"not in the Hugging Face cache, and HF_HUB_OFFLINE=1.*HF_HOME.*checkout of ragkit's repository.*make models"
    )
    with pytest.raises(ModelNotFoundError, match=hub_first):
        check_model("intfloat/e5-small-v2", "embedder", offline=True)


def _broken_copy(source: str, tmp_path, damage: str) -> str:
    folder = tmp_path / f"model-{damage}"
    shutil.copytree(source, folder)
    if damage == "no config":
        (folder / "config.json").unlink()
    elif damage == "bad config":
        (folder / "config.json").write_text("{not json")
    elif damage == "no weights":
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
    return str(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no config", "it has no config.json"),
        ("bad config", "its config.json cannot be read as JSON"),
        ("no weights", "it holds no weights"),
    ],
)
def test_a_folder_that_is_not_a_model_is_refused_before_any_work(
    damage, message, tiny_embedder_path, demo, cache, tmp_path
):
    folder = _broken_copy(tiny_embedder_path, tmp_path, damage)
    with pytest.raises(ModelNotFoundError, match=f"cannot be loaded as an embedder: {message}"):
        experiment(demo, [Pipeline(embedder=folder)], show_progress=False)
    assert not (cache / "chroma").exists()


def test_an_embedder_folder_is_not_a_cross_encoder(tiny_embedder_path, tiny_cross_encoder_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", "--dataset", "demo", "--embedders", tiny_embedder_path, "--rerankers", tiny_embedder_path,
                 "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "not a sequence-classification head (a cross-encoder's)" in err and "Traceback" not in err
    assert not out.exists()


def test_the_report_names_the_models_the_catalogue_does_not_know(tiny_embedder_path, demo, cache):
    result = experiment(demo, [Pipeline(embedder=tiny_embedder_path)], latency_queries=0, show_progress=False)
    assert result.meta["uncatalogued_models"] == [tiny_embedder_path]
    summary = markdown_summary(result)
    assert "not in ragkit's model catalogue" in summary and tiny_embedder_path in summary
