"""What the command says about itself: its version, a description for its user, and every
option's default."""

from __future__ import annotations

import pytest

from ragkit import __version__
from ragkit.cli import main
from ragkit.settings import DEFAULT_MEASURES, DEFAULT_RERANK_K, DEFAULT_RERANKER


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ragkit {__version__}"


def test_help_speaks_to_the_user_of_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "reranker is worth its latency" in text and "ragkit eval --help" in text
    assert "``" not in text and "this module" not in text


def test_eval_help_states_every_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"(default: none {DEFAULT_RERANKER})" in text and "['none'" not in text
    assert f"candidates the reranker sees (default: {DEFAULT_RERANK_K})" in text
    assert f"ir-measures names (default: {' '.join(DEFAULT_MEASURES)})" in text
    assert "the split whose queries and judgements are evaluated (default: test)" in text


def test_zero_and_all_mean_every_query_for_both_query_options(capsys):
    from ragkit.cli import build_parser

    parser = build_parser()
    for option in ("queries", "subset"):
        for value in ("all", "0"):
            assert getattr(parser.parse_args(["eval", f"--{option}", value]), option) == 0
        assert getattr(parser.parse_args(["eval", f"--{option}", "25"]), option) == 25
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--queries", "many"])
    assert "expected a number of queries or 'all', got 'many'" in capsys.readouterr().err
