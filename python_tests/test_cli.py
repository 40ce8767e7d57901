"""The omnikern command: --help lists every subcommand; unbuilt ones say so and exit non-zero."""

from __future__ import annotations

import subprocess
import sys


from omnikern.cli import _PLANNED, main

SUBCOMMANDS = ["train", "eval", "export-triton", "serve", "query", "demo"]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "omnikern", "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_unbuilt_subcommands_say_so(capsys):
    for name in _PLANNED:  # empty once every subcommand is built
        assert main([name]) == 2
        assert "not built yet" in capsys.readouterr().err


def test_hash_prints_ids(capsys):
    assert main(["hash", "a", ""]) == 0
    assert capsys.readouterr().out.splitlines() == ["678337969\ta", "0\t"]


def test_demo_passes(capsys):
    assert main(["demo", "--ops"]) == 0
    assert "all checks passed" in capsys.readouterr().out
