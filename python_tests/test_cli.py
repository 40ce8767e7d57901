"""The omnikern command: --help lists every subcommand, every option has help text, and the cheap commands run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omnikern.cli import main

SUBCOMMANDS = ["train", "eval", "embed", "index", "export-triton", "serve", "query", "demo", "data"]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "omnikern", "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_every_option_has_help():
    from omnikern.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(subparsers) == sorted(SUBCOMMANDS + ["hash"])
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"omnikern {name} {action.option_strings or action.dest} has no help text"


def test_hash_prints_ids(capsys):
    assert main(["hash", "a", ""]) == 0
    assert capsys.readouterr().out.splitlines() == ["678337969\ta", "0\t"]


def test_demo_passes(capsys):
    assert main(["demo", "--ops"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_loss_agreement_of_two_runs(tmp_path):
    from omnikern.demo import comparison_table, format_agreement, loss_agreement

    def run(name, losses, recall):
        directory = tmp_path / name
        directory.mkdir()
        lines = ["step,seconds,loss"] + [f"{10 * (i + 1)},0.0,{v}" for i, v in enumerate(losses)]
        (directory / "scalars.csv").write_text("\n".join(lines) + "\n")

        def metrics(value):
            return {"recall@10": value, "recall@10_ci": [value - 0.1, value + 0.1]}

        return directory, {"tasks": {"category": {"queries": 40, "trained": metrics(recall), "fixed": metrics(0.4),
                                                  "zero_shot": metrics(0.3)},
                                     "query": {"queries": 9, "trained": metrics(0.9), "zero_shot": metrics(0.1)}}}

    (a, ra), (b, rb) = run("a", [5.0, 4.0, 3.0], 0.50), run("b", [5.0, 4.5, 3.0], 0.52)
    agreement = loss_agreement(a, b, ra, rb)
    assert agreement["steps_compared"] == 3 and agreement["max_abs_loss_delta"] == 0.5
    assert agreement["max_rel_loss_delta"] == 0.5 / 4.0
    assert agreement["recall10_delta"] == {"trained/category": pytest.approx(0.02), "fixed/category": 0.0,
                                           "trained/query": 0.0}
    assert "0.0200" in format_agreement(agreement)
    table = comparison_table(ra, {"seed_1": rb}).splitlines()
    assert table[2].split()[-4:] == ["0.300", "[0.200,0.400]", "0.100", "[0.000,0.200]"]
    assert table[4].endswith("-")  # no legacy vectors for the query task
    assert "seed_1: trained" in table[5] and "0.520" in table[5]