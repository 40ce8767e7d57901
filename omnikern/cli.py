"""The ``omnikern`` command: train, evaluate, export to Triton, serve, query, and the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Subcommands still being built: name -> the issue that delivers it. They exist so that `--help`
# shows the whole tool, and say clearly that they are not there yet.
_PLANNED = {
    "export-triton": ("write a Triton Inference Server model repository", "the serving issue"),
    "serve": ("start tritonserver on a model repository", "the serving issue"),
    "query": ("send a text query to a running server and print the top-k", "the serving issue"),
}


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: catalogue → legacy vectors → train on CPU → evaluate vs zero-shot → table
    (``--ops``: only the quick op checks)."""
    from omnikern.demo import run_demo, run_op_checks

    if args.ops:
        return run_op_checks(quick=not args.full)
    return run_demo(cache_dir=args.cache_dir, out=args.out, steps=args.steps, ablations=args.ablations)


def _cmd_hash(args: argparse.Namespace) -> int:
    from omnikern.text import string_id_hash

    for text, entity_id in zip(args.strings, string_id_hash(args.strings, bits=args.bits)):
        print(f"{entity_id}\t{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from omnikern import __version__

    parser = argparse.ArgumentParser(prog="omnikern", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnikern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, (help_text, _) in _PLANNED.items():
        planned = sub.add_parser(name, help=f"{help_text} (not built yet)")
        planned.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    # ---- model: train / eval / demo ----
    from omnikern.models.commands import add_model_commands

    add_model_commands(sub)
    demo = sub.add_parser("demo", help="the main job: train on the recipe catalogue on CPU, compare with zero-shot MiniLM")
    demo.add_argument("--cache-dir", help="cache for legacy vectors (default ~/.cache/omnikern)")
    demo.add_argument("--out", help="run directory (default <cache-dir>/demo)")
    demo.add_argument("--steps", type=int, help="training steps (default: the demo preset)")
    demo.add_argument("--ablations", action="store_true", help="also train and score the ablation rows")
    demo.add_argument("--ops", action="store_true", help="only check the ops against their references (seconds)")
    demo.add_argument("--full", action="store_true", help="with --ops: full sizes")
    demo.set_defaults(func=_cmd_demo)
    # ---- end model ----

    hash_cmd = sub.add_parser("hash", help="print the entity id of each string")
    hash_cmd.add_argument("strings", nargs="+")
    hash_cmd.add_argument("--bits", type=int, choices=(32, 64), default=32)
    hash_cmd.set_defaults(func=_cmd_hash)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _PLANNED:
        print(f"omnikern {args.command}: not built yet (it comes with {_PLANNED[args.command][1]})", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
