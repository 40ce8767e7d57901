"""The ``omnikern`` command: train, evaluate, export to Triton, serve, query, and the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Subcommands still being built: name -> the issue that delivers it. They exist so that `--help`
# shows the whole tool, and say clearly that they are not there yet.
_PLANNED = {
}


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: catalogue → legacy vectors → train on CPU → evaluate vs zero-shot → table
    (``--ops``: only the quick op checks)."""
    from omnikern.demo import run_demo, run_op_checks

    if args.ops:
        return run_op_checks(quick=not args.full)
    return run_demo(cache_dir=args.cache_dir, out=args.out, steps=args.steps, ablations=args.ablations,
                    serve=not args.no_serve)


def _cmd_hash(args: argparse.Namespace) -> int:
    from omnikern.text import string_id_hash

    for text, entity_id in zip(args.strings, string_id_hash(args.strings, bits=args.bits)):
        print(f"{entity_id}\t{text}")
    return 0


def _cmd_export_triton(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from omnikern.serve.export import build_recipe_index, export_triton, zero_shot_tower

    if (args.checkpoint is None) == (not args.zero_shot):
        print("omnikern export-triton: give exactly one of --checkpoint DIR or --zero-shot", file=sys.stderr)
        return 2
    if args.index is None and not args.zero_shot:
        print("omnikern export-triton: --index FILE is needed with --checkpoint", file=sys.stderr)
        return 2
    options = {"max_batch_size": args.max_batch_size, "instance_kind": args.instance_kind,
               "instance_count": args.instance_count, "k_default": args.k, "overwrite": args.overwrite,
               "encoder_runtime": args.encoder_runtime, "pipeline": args.pipeline}
    with tempfile.TemporaryDirectory(prefix="omnikern-export-") as tmp:
        if args.zero_shot:
            tower = zero_shot_tower()
            index_path = args.index
            if index_path is None:
                index_path = Path(tmp) / "index.safetensors"
                index = build_recipe_index(tower, index_path, limit=args.limit)
                print(f"built an int8 index of {len(index)} recipes with the zero-shot query tower")
            out = export_triton(tower, index_path, args.out, **options)
        else:
            out = export_triton(args.checkpoint, args.index, args.out, **options)
    print(f"wrote the model repository {out} (see {Path(out) / 'README.txt'})")
    print(f"serve it with: omnikern serve --model-repo {out}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from omnikern.serve import TritonServer, TritonServerError

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM stops as cleanly as Ctrl-C does; SIGINT gets a handler too, as a process started in
    # the background of a non-interactive shell inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = TritonServer(args.model_repo, startup_timeout_s=args.timeout)
    try:
        server.start()
        print(f"tritonserver ready in {server.startup_s:.1f} s (pid {server.pid}, log {server.log_path})")
        print(f"HTTP    {server.url_http}")
        print(f"gRPC    {server.url_grpc}")
        print(f"metrics {server.url_metrics}")
        print(f'try: omnikern query "tomato soup" --url {server.url_http}')
        print("Ctrl-C stops the server", flush=True)
        while server.is_alive():
            time.sleep(0.5)
        print("tritonserver exited on its own; its log:\n" + server.read_log()[-4000:], file=sys.stderr)
        return 1
    except TritonServerError as error:
        print(f"omnikern serve: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping tritonserver", flush=True)
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _recipe_titles() -> dict[int, str]:
    """Recipe id -> title when the catalogue is installed, else {}."""
    try:
        from omnikern.data.recipes import load_recipes

        return {r.id: r.title for r in load_recipes()}
    except (FileNotFoundError, ValueError, ImportError):
        return {}


def _cmd_query(args: argparse.Namespace) -> int:
    import time

    from omnikern.serve import Client

    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:
        print("omnikern query needs tritonclient: pip install 'omnikern[serve]'", file=sys.stderr)
        return 2
    titles = _recipe_titles()
    try:
        with Client(args.url, protocol=args.protocol) as client:
            start = time.perf_counter()
            scores, ids = client.search(args.texts, k=args.k)
            elapsed_ms = (time.perf_counter() - start) * 1e3
    except (InferenceServerException, ConnectionError, OSError) as error:
        print(f"omnikern query: the server at {args.url} ({args.protocol}) answered with an error: {error}",
              file=sys.stderr)
        return 1
    for text, row_scores, row_ids in zip(args.texts, scores, ids):
        print(f"query: {text!r}")
        print(f"{'rank':>4}  {'id':>20}  {'score':>8}  title")
        for rank, (item, score) in enumerate(zip(row_ids, row_scores), start=1):
            if score == float("-inf"):
                break  # the index has fewer than k rows (ids may be negative: the score marks a gap)
            print(f"{rank:>4}  {int(item):>20}  {float(score):>8.4f}  {titles.get(int(item), '')}")
    print(f"({len(args.texts)} queries in {elapsed_ms:.1f} ms over {args.protocol})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from omnikern import __version__

    parser = argparse.ArgumentParser(prog="omnikern", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnikern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, (help_text, _) in _PLANNED.items():
        planned = sub.add_parser(name, help=f"{help_text} (not built yet)")
        planned.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    export = sub.add_parser("export-triton", help="write a Triton Inference Server model repository")
    export.add_argument("--checkpoint", help="query-tower checkpoint directory: query_tower.json + "
                        "query_tower.safetensors + wordpiece.json (omnikern.serve.save_query_tower)")
    export.add_argument("--zero-shot", action="store_true", help="export the untrained MiniLM query tower instead; "
                        "without --index, builds a recipe index with it")
    export.add_argument("--index", help="an Int8Index file (Int8Index.save) whose dim is the tower's output")
    export.add_argument("--out", required=True, help="model repository directory to write")
    export.add_argument("--limit", type=int, default=None, help="--zero-shot index: only the first N recipes")
    export.add_argument("--max-batch-size", type=int, default=64)
    export.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU"), default="KIND_CPU")
    export.add_argument("--instance-count", type=int, default=1)
    export.add_argument("--k", type=int, default=10, help="results per query when a request gives no k")
    export.add_argument("--encoder-runtime", choices=("auto", "torch", "onnx"), default="auto",
                        help="run the query encoder with torch, or as an ONNX graph in onnxruntime (CPU only); "
                        "auto (default): onnx for KIND_CPU, torch for KIND_GPU")
    export.add_argument("--pipeline", choices=("ensemble", "fused"), default="ensemble",
                        help="omnisearch as an ensemble of the tokenizer, encoder and scorer models (default), or "
                        "fused: one python-backend model running the three steps in one process")
    export.add_argument("--overwrite", action="store_true", help="replace the models of an existing repository")
    export.set_defaults(func=_cmd_export_triton)

    serve = sub.add_parser("serve", help="start tritonserver on a model repository (127.0.0.1, free ports)")
    serve.add_argument("--model-repo", required=True)
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the models to load")
    serve.set_defaults(func=_cmd_serve)

    query = sub.add_parser("query", help="send text queries to a running server and print the top-k")
    query.add_argument("texts", nargs="+", metavar="TEXT")
    query.add_argument("--url", required=True, help="host:port of the HTTP (or gRPC) endpoint")
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--protocol", choices=("http", "grpc"), default="http")
    query.set_defaults(func=_cmd_query)


    # ---- model: train / eval / demo ----
    from omnikern.models.commands import add_model_commands

    add_model_commands(sub)
    demo = sub.add_parser("demo", help="the main job: train on the recipe catalogue on CPU, compare with zero-shot MiniLM")
    demo.add_argument("--cache-dir", help="cache for legacy vectors (default ~/.cache/omnikern)")
    demo.add_argument("--out", help="run directory (default <cache-dir>/demo)")
    demo.add_argument("--steps", type=int, help="training steps (default: the demo preset)")
    demo.add_argument("--ablations", action="store_true", help="also train and score the ablation rows")
    demo.add_argument("--no-serve", action="store_true", help="skip exporting, serving and querying the trained model")
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
