"""Every eval command line: each option has help, and its default is stated once."""

from __future__ import annotations

import argparse
import importlib

import pytest

from eval.cli import HelpFormatter

MODULES = [
    "eval.__main__",
    "eval.bench",
    "eval.bench_bytes",
    "eval.bench_remote",
    "eval.bench_vllm",
    "eval.bench_retrieval",
    "eval.bench_real",
    "eval.bench_network",
    "eval.replay",
    "eval.report",
    "eval.tool_calls",
    "eval.train_pair",
    "eval.world",
]


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its subcommands' parsers."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += parsers(sub)
    return found


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text argparse prints for one option, defaults filled in, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


@pytest.mark.parametrize("name", MODULES)
def test_every_option_has_help_naming_its_default_once(name):
    for parser in parsers(importlib.import_module(name).build_parser()):
        assert parser.formatter_class is HelpFormatter, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = option_help(parser, action)
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert text, f"{where} has no help"
            assert text.lower().count("default") <= 1, f"{where}: {text}"
            assert "(default: None)" not in text, f"{where}: {text}"
            if action.option_strings and action.default not in (None, False):
                assert "default" in text, f"{where} does not say its default: {text}"


BENCHES = [name for name in MODULES if name.startswith("eval.bench")]


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_can_be_quiet_and_names_its_output(name):
    """--quiet turns the progress bars off; --out is where the record goes."""
    parser = importlib.import_module(name).build_parser()
    required = ["--data", "d"] if name == "eval.bench" else []
    assert parser.parse_args([*required, "--quiet", "--out", "x"]).quiet is True
    assert parser.parse_args(required).quiet is False


def test_bench_help_prints_each_default_once(capsys):
    from eval.bench import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and ") (default:" not in text
    assert "--specialist SPECIALIST HF folder or hub id (default: " in text
    assert "--gammas G,.. γ values of the specsteer sweep (default: 1.0,0.5,0.1,0.01)" in text


@pytest.mark.parametrize(
    ("default", "help_", "shown"),
    [
        (3, "entries", "entries (default: 3)"),
        (0, "seed", "seed (default: 0)"),  # 0 is a default to show, unlike None
        (None, "a folder", "a folder"),
        (None, "a folder (default: the shipped one)", "a folder (default: the shipped one)"),
        ([1, 2], "sizes", "sizes (default: 1,2)"),
        ("50%", "share", "share (default: 50%)"),
    ],
)
def test_the_formatter_adds_a_default_only_where_one_is_missing(default, help_, shown):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    action = parser.add_argument("--x", default=default, help=help_)
    assert option_help(parser, action) == shown
