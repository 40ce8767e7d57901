"""The ``omnikern`` command: train, evaluate, export to Triton, serve, query, hash, and the demo.

Every subcommand is defined here. Each imports what it needs when it runs, so that
``omnikern --help`` starts in a fraction of a second (no torch, triton or models loaded).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# train / eval / demo
# ---------------------------------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace):
    from omnikern.models.config import apply_overrides, load_config
    from omnikern.recipe import ABLATIONS

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.cache_dir is not None:
        overrides.append(f"data.cache_dir={json.dumps(str(args.cache_dir))}")
    config = load_config(args.config, overrides)
    if getattr(args, "ablation", None):
        apply_overrides(config, ABLATIONS[args.ablation])
    return config


def _fail(command: str, error: Exception) -> int:
    """Prints a bad-input error as one line (no traceback) and returns the exit status 2."""
    print(f"omnikern {command}: {error}", file=sys.stderr)
    return 2


def _cmd_train(args: argparse.Namespace) -> int:
    from omnikern.recipe import export_for_serving, recipe_trainer

    config = _config_from_args(args)
    if args.data is not None:
        config.data.path = str(args.data)
    if config.data.path is not None or (args.resume is not None and _is_catalogue_run(args.resume)):
        return _train_catalogue(args, config)
    trainer = recipe_trainer(config, args.out, resume=args.resume)
    try:
        last = trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        tower_dir, index_path = export_for_serving(trainer.model, trainer.data, args.out)
        print(f"trained {trainer.step_count} steps, last loss {last.get('loss', float('nan')):.4f}, "
              f"skipped {trainer.bad_steps}; checkpoint in {args.out}")
        print(f"for serving: omnikern export-triton --checkpoint {tower_dir} --index {index_path} --out <repo>")
    return 0


def _is_catalogue_run(path) -> bool:
    from omnikern.catalogue import is_catalogue_run

    return is_catalogue_run(path)


def _train_catalogue(args: argparse.Namespace, config) -> int:
    from omnikern.catalogue import catalogue_trainer
    from omnikern.models.checkpoint import QUERY_TOWER_DIR, save_query_tower
    from omnikern.models.components import serving_query_tower

    try:
        # Opening the dataset checks every file before any training (docs/data-format.md).
        trainer = catalogue_trainer(config, args.out, resume=args.resume)
    except (FileNotFoundError, ValueError) as error:
        return _fail("train", error)
    if trainer.rank == 0:
        print(trainer.data.dataset)
    try:
        last = trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        tower_dir = save_query_tower(serving_query_tower(trainer.model), Path(args.out) / QUERY_TOWER_DIR)
        data = trainer.config.data.path
        print(f"trained {trainer.step_count} steps, last loss {last.get('loss', float('nan')):.4f}, "
              f"skipped {trainer.bad_steps}; checkpoint in {args.out}")
        print(f"next: omnikern eval {args.out} --data {data}; omnikern embed {args.out} --data {data} --out EMB; "
              f"omnikern index build EMB --out INDEX; omnikern export-triton --checkpoint {tower_dir} --index INDEX "
              "--out REPO")
    return 0


def _eval_catalogue(args: argparse.Namespace) -> int:
    from omnikern._atomic import write_bytes_atomic
    from omnikern.catalogue import evaluate_catalogue, format_catalogue_results, load_catalogue_run

    if args.index is not None:
        return _fail("eval", ValueError("--index is for runs on the recipe catalogue; a run trained with --data is "
                                        "scored on exact embeddings of every entity"))

    try:
        model, config, data = load_catalogue_run(args.checkpoint, args.data)
    except (FileNotFoundError, ValueError) as error:
        return _fail("eval", error)
    results = evaluate_catalogue(model, config, data, zero_shot=not args.no_zero_shot, progress=True,
                                 filtered=not args.no_filter)
    print(format_catalogue_results(results))
    if args.json is not None:
        write_bytes_atomic(args.json, json.dumps(results, indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import os

    from tqdm.auto import tqdm

    from omnikern.catalogue import iter_embeddings, load_catalogue_run
    from omnikern.data.embeddings import EmbeddingWriter, finalize_embeddings, is_rank_complete

    # torchrun sets RANK/WORLD_SIZE: each rank embeds every world-th batch of the dataset's
    # deterministic stream (by file, row group and type) and writes its own shards.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if is_rank_complete(args.out, rank):
        print(f"omnikern embed: rank {rank} of {world} is already complete in {args.out}; skipping")
    else:
        try:
            model, config, data = load_catalogue_run(args.checkpoint, args.data)
            stream = data.dataset.iter_entities(args.batch_rows, args.entity_type or None)
        except (FileNotFoundError, ValueError) as error:
            return _fail("embed", error)
        mine = (batch for i, batch in enumerate(stream) if i % world == rank)
        # A rank's share is known only once its batches are read (they follow the row groups), so
        # under several ranks the bar counts without a total.
        total = sum(data.dataset.num_entities(t) for t in (args.entity_type or data.dataset.entity_types))
        writer = EmbeddingWriter(args.out, config.model.output_dim, rank=rank, world=world)
        with tqdm(total=total if world == 1 else None, desc=f"embedding (rank {rank})", unit="entity",
                  disable=rank != 0) as bar:
            for batch, vectors in iter_embeddings(model, data, batches=mine):
                writer.write(batch.ids, batch.entity_type, vectors)
                bar.update(len(batch))
        writer.close()
    try:
        manifest = finalize_embeddings(args.out, world)
    except (FileNotFoundError, ValueError) as error:
        print(f"omnikern embed: rank {rank} done; the manifest waits for the other ranks ({error})")
        return 0
    print(f"wrote the embeddings to {args.out} ({manifest})")
    return 0


def _cmd_index_build(args: argparse.Namespace) -> int:
    from omnikern.data.embeddings import build_index_set

    if not _out_is_free("index build", Path(args.out), args.overwrite):
        return 2
    try:
        indexes = build_index_set(args.embeddings, args.out, args.entity_type or None, shards=args.shards,
                                  keep_float=args.keep_float)
    except (FileNotFoundError, ValueError) as error:
        return _fail("index build", error)
    for name, index in indexes.items():
        print(f"{name}: {len(index)} rows of dim {index.dim} in {len(index.shards)} shards")
    print(f"wrote the index set to {args.out} (serve it: omnikern export-triton --index {args.out})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.data is not None or args.json is not None or _is_catalogue_run(args.checkpoint):
        return _eval_catalogue(args)
    from omnikern.index import Int8Index
    from omnikern.models.components import build_encoder
    from omnikern.models.recipe_eval import evaluate_recipe_model, format_table, write_results
    from omnikern.recipe import load_trained

    model, config, data = load_trained(args.checkpoint)
    index = None
    if args.index is not None:
        index = Int8Index.load(args.index)
        if index.dim > config.model.output_dim:
            print(f"omnikern eval: --index {args.index} has dim {index.dim}, wider than the checkpoint's embedding "
                  f"({config.model.output_dim}): it was built for another model", file=sys.stderr)
            return 2
    zero_shot = build_encoder(config, len(data.tokenizer)) if args.zero_shot else None
    results = evaluate_recipe_model(model, data, zero_shot=zero_shot, index=index)
    json_path, png_path = write_results(results, args.out or Path(args.checkpoint), "results")
    print(format_table(results))
    print(f"wrote {json_path} and {png_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from omnikern.demo import run_demo, run_op_checks

    if args.ops:
        return run_op_checks(quick=not args.full)
    return run_demo(cache_dir=args.cache_dir, out=args.out, steps=args.steps, ablations=args.ablations,
                    serve=not args.no_serve)


# ---------------------------------------------------------------------------------------------
# export-triton / serve / query
# ---------------------------------------------------------------------------------------------


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from omnikern.models.encoders import zero_shot_tower
    from omnikern.recipe import build_recipe_index
    from omnikern.serve.export import export_triton

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
    from omnikern.serve.server import TritonServer, TritonServerError

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
    from omnikern.serve.client import Client

    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:
        print("omnikern query needs tritonclient: pip install 'omnikern[serve]'", file=sys.stderr)
        return 2
    from omnikern.serve.client import MultiClient

    titles = _recipe_titles()
    urls = [u for u in args.url.split(",") if u]
    try:
        with (Client(urls[0], protocol=args.protocol) if len(urls) == 1 else
              MultiClient(urls, protocol=args.protocol)) as client:
            start = time.perf_counter()
            scores, ids, types = client.search(args.texts, k=args.k, entity_type=args.entity_type,
                                               return_entity_types=True)
            elapsed_ms = (time.perf_counter() - start) * 1e3
    except (InferenceServerException, ConnectionError, OSError, RuntimeError) as error:
        print(f"omnikern query: the server at {args.url} ({args.protocol}) answered with an error: {error}",
              file=sys.stderr)
        return 1
    for text, row_scores, row_ids, row_types in zip(args.texts, scores, ids, types):
        print(f"query: {text!r}")
        print(f"{'rank':>4}  {'id':>20}  {'type':>10}  {'score':>8}  title")
        for rank, (item, score, kind) in enumerate(zip(row_ids, row_scores, row_types), start=1):
            if score == float("-inf"):
                break  # the index has fewer than k rows (ids may be negative: the score marks a gap)
            print(f"{rank:>4}  {int(item):>20}  {kind:>10}  {float(score):>8.4f}  {titles.get(int(item), '')}")
    print(f"({len(args.texts)} queries in {elapsed_ms:.1f} ms over {args.protocol})")
    return 0


# ---------------------------------------------------------------------------------------------
# hash
# ---------------------------------------------------------------------------------------------


def _cmd_hash(args: argparse.Namespace) -> int:
    from omnikern.text import string_id_hash

    for text, entity_id in zip(args.strings, string_id_hash(args.strings, bits=args.bits)):
        print(f"{entity_id}\t{text}")
    return 0


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _out_is_free(command: str, out: Path, overwrite: bool) -> bool:
    """Whether ``--out`` may be written (absent, empty, or ``--overwrite``); prints why not."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        what = "is not a directory" if not out.is_dir() else "exists and is not empty (--overwrite replaces it)"
        print(f"omnikern {command}: --out {out} {what}", file=sys.stderr)
        return False
    return True


def _cmd_data_shop(args: argparse.Namespace) -> int:
    if not _out_is_free("data shop", Path(args.out), args.overwrite):
        return 2
    from omnikern.data.dataset import Dataset
    from omnikern.data.shop import write_shop

    for name in ("products", "boards", "train_pairs", "eval_pairs"):
        if getattr(args, name) < 1:
            return _fail("data shop", ValueError(f"--{name.replace('_', '-')} must be at least 1, got "
                                                 f"{getattr(args, name)}"))
    path = write_shop(args.out, num_products=args.products, num_boards=args.boards, num_train=args.train_pairs,
                      num_eval=args.eval_pairs, seed=args.seed)
    print(Dataset.open(path))
    print(f"wrote the generated shop dataset to {path} (docs/data-format.md)")
    return 0


def _cmd_data_recipes(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not _out_is_free("data recipes", out, args.overwrite):
        return 2
    if args.max_recipes is not None and args.max_recipes < 2:
        print(f"omnikern data recipes: --max-recipes must be at least 2 (a train and an eval recipe), got "
              f"{args.max_recipes}", file=sys.stderr)
        return 2
    from omnikern.data.dataset import Dataset
    from omnikern.models.config import load_config
    from omnikern.recipe import write_recipe_dataset

    overrides = list(args.overrides)
    if args.cache_dir is not None:
        overrides.append(f"data.cache_dir={json.dumps(str(args.cache_dir))}")
    if args.max_recipes is not None:
        overrides.append(f"data.max_recipes={args.max_recipes}")
    try:
        config = load_config(args.config, overrides)
        path = write_recipe_dataset(config, out, query_task=args.query_task, progress=True)
    except (FileNotFoundError, ValueError) as error:  # CatalogueNotInstalledError is a FileNotFoundError
        print(f"omnikern data recipes: {error}", file=sys.stderr)
        return 2
    print(Dataset.open(path))
    print(f"wrote the recipe dataset to {path} (docs/data-format.md)")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------

# Named ablations of `train --ablation` (omnikern.recipe.ABLATIONS; listed here so that --help
# needs no import of the models).
_ABLATION_NAMES = ("full", "in_batch_only", "no_id_mask", "no_legacy_init", "no_logq", "no_small_dims",
                   "reference_loss", "seed_1", "seed_2")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON or TOML config file (sections data/model/loss/optim/train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (JSON value, else a string); repeatable")
    parser.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    parser.add_argument("--cache-dir", type=Path, help="shorthand for --set data.cache_dir=DIR (legacy vector cache)")


def build_parser() -> argparse.ArgumentParser:
    from omnikern import __version__

    parser = argparse.ArgumentParser(prog="omnikern", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"omnikern {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", help="train a model on a dataset (--data) or the recipe catalogue (torchrun for "
                           "several ranks)")
    _add_config_arguments(train)
    train.add_argument("--data", type=Path, help="a dataset directory in the documented format (docs/data-format.md); "
                       "without it, the recipe catalogue")
    train.add_argument("--out", type=Path, default=Path("runs/omnikern"),
                       help="run directory: checkpoints, scalars.csv, and the query tower + item index for serving "
                       "(default runs/omnikern)")
    train.add_argument("--resume", type=Path, help="checkpoint or run directory to continue from")
    train.add_argument("--ablation", choices=_ABLATION_NAMES, help="apply a named ablation's overrides")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint: Recall@10/100 and MRR per task (or query kind)")
    evaluate.add_argument("checkpoint", type=Path, help="checkpoint or run directory")
    evaluate.add_argument("--data", type=Path, help="the dataset whose eval/ pairs to score (default: the one the run "
                          "trained on)")
    evaluate.add_argument("--json", type=Path, help="write the results (with bootstrap 95%% intervals) to this JSON file")
    evaluate.add_argument("--no-filter", action="store_true", help="with a dataset run: keep the entities that train/ "
                          "pairs with the same query and task in its ranking (default: left out, as known positives)")
    evaluate.add_argument("--no-zero-shot", action="store_true", help="with a dataset run: skip the zero-shot "
                          "baseline (it encodes every candidate entity once, then caches)")
    evaluate.add_argument("--out", type=Path, help="where results.json/.png go (default: the checkpoint)")
    evaluate.add_argument("--index", type=Path, help="an Int8Index file under recipe ids (e.g. RUN/item_index.safetensors): "
                          "also evaluate the query tower against it")
    evaluate.add_argument("--zero-shot", action="store_true", help="also score the untrained encoder (baseline)")
    evaluate.set_defaults(func=_cmd_eval)

    embed = sub.add_parser("embed", help="embed every entity of a dataset with a trained run's item towers "
                           "(torchrun: one share per rank)")
    embed.add_argument("checkpoint", type=Path, help="run directory (or checkpoint) trained with train --data")
    embed.add_argument("--data", type=Path, help="the dataset (default: the one the run trained on)")
    embed.add_argument("--out", type=Path, required=True, help="the embeddings directory to write (Parquet shards "
                       "and manifest.json)")
    embed.add_argument("--entity-type", action="append", default=[], metavar="TYPE",
                       help="only this entity type; repeatable (default: all)")
    embed.add_argument("--batch-rows", type=int, default=4096, help="entities per batch (default 4096)")
    embed.set_defaults(func=_cmd_embed)

    index = sub.add_parser("index", help="build int8 indexes from embeddings")
    index_sub = index.add_subparsers(dest="index_command", metavar="INDEX_COMMAND", required=True,
                                     help="what to do")
    build = index_sub.add_parser("build", help="one int8 index per entity type (an index set) from the embeddings "
                                 "omnikern embed wrote")
    build.add_argument("embeddings", type=Path, help="the embeddings directory (omnikern embed --out)")
    build.add_argument("--out", type=Path, required=True, help="the index set directory to write")
    build.add_argument("--entity-type", action="append", default=[], metavar="TYPE",
                       help="only this entity type; repeatable (default: all)")
    build.add_argument("--shards", type=int, default=1, help="shards per entity type, searched in parallel (default 1)")
    build.add_argument("--keep-float", action="store_true", help="also keep the float vectors (4·D bytes per row) "
                       "for exact re-ranking")
    build.add_argument("--overwrite", action="store_true", help="write into --out even when it holds files")
    build.set_defaults(func=_cmd_index_build)

    export = sub.add_parser("export-triton", help="write a Triton Inference Server model repository")
    export.add_argument("--checkpoint", help="query-tower directory: query_tower.json + query_tower.safetensors + "
                        "wordpiece.json (omnikern train writes RUN/query_tower)")
    export.add_argument("--zero-shot", action="store_true", help="export the untrained MiniLM query tower instead; "
                        "without --index, builds a recipe index with it")
    export.add_argument("--index", help="an Int8Index file (Int8Index.save), or an index directory (omnikern index "
                        "build: one index per entity type), whose dim is the tower's output")
    export.add_argument("--out", required=True, help="model repository directory to write")
    export.add_argument("--limit", type=int, default=None, help="--zero-shot index: only the first N recipes")
    export.add_argument("--max-batch-size", type=int, default=64, help="rows per dynamic batch (default 64)")
    export.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU"), default="KIND_CPU",
                        help="where the encoder and scorer run (the tokenizer always runs on CPU)")
    export.add_argument("--instance-count", type=int, default=1, help="instances of each model (default 1)")
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
    serve.add_argument("--model-repo", required=True, help="the repository export-triton wrote")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the models to load")
    serve.set_defaults(func=_cmd_serve)

    query = sub.add_parser("query", help="send text queries to a running server and print the top-k")
    query.add_argument("texts", nargs="+", metavar="TEXT", help="one query per argument")
    query.add_argument("--url", required=True, help="host:port of the HTTP (or gRPC) endpoint; several, comma-separated, "
                       "for servers that each hold a part of the catalogue (their answers are merged)")
    query.add_argument("--entity-type", help="search only this entity type's index (default: every served type)")
    query.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    query.add_argument("--protocol", choices=("http", "grpc"), default="http", help="how to talk to the server")
    query.set_defaults(func=_cmd_query)

    demo = sub.add_parser("demo", help="the main job: train on the recipe catalogue on CPU, compare with zero-shot "
                          "MiniLM, serve and query the result")
    demo.add_argument("--cache-dir", help="cache for legacy vectors (default ~/.cache/omnikern)")
    demo.add_argument("--out", help="run directory (default <cache-dir>/demo)")
    demo.add_argument("--steps", type=int, help="training steps (default: the demo preset)")
    demo.add_argument("--ablations", action="store_true", help="also train and score the ablation rows")
    demo.add_argument("--no-serve", action="store_true", help="skip exporting, serving and querying the trained model")
    demo.add_argument("--ops", action="store_true", help="only check the ops against their references (seconds)")
    demo.add_argument("--full", action="store_true", help="with --ops: full sizes")
    demo.set_defaults(func=_cmd_demo)

    hash_cmd = sub.add_parser("hash", help="print the entity id of each string")
    hash_cmd.add_argument("strings", nargs="+", help="the strings to hash")
    hash_cmd.add_argument("--bits", type=int, choices=(32, 64), default=32, help="id width (default 32)")
    hash_cmd.set_defaults(func=_cmd_hash)

    data = sub.add_parser("data", help="write datasets in the documented format (docs/data-format.md)")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True,
                                   help="the dataset to write")
    recipes = data_sub.add_parser("recipes", help="the recipe catalogue: recipe entities with their legacy vectors, "
                                  "and the train/eval pairs of the query sets (one task per query kind)")
    recipes.add_argument("--out", type=Path, required=True, help="the dataset directory to write")
    recipes.add_argument("--config", type=Path, help="JSON or TOML config file (its data and model.encoder sections "
                         "choose the catalogue, the split and the legacy vectors)")
    recipes.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override one config value (JSON value, else a string); repeatable")
    recipes.add_argument("--cache-dir", type=Path, help="shorthand for --set data.cache_dir=DIR (legacy vector cache)")
    recipes.add_argument("--max-recipes", type=int, help="only the first N recipes (shorthand for --set "
                         "data.max_recipes=N)")
    recipes.add_argument("--query-task", action="store_true", help="also write the query -> query pairs (task "
                         "'query', with 'query' entities that have no legacy vector)")
    recipes.add_argument("--overwrite", action="store_true", help="replace --out when it holds files")
    recipes.set_defaults(func=_cmd_data_recipes)
    shop = data_sub.add_parser("shop", help="a generated two-type shop (products with legacy vectors and a price, "
                               "boards without), skewed popularity, three tasks: to try the pipeline on")
    shop.add_argument("--out", type=Path, required=True, help="the dataset directory to write")
    shop.add_argument("--products", type=int, default=2000, help="product entities (default 2000)")
    shop.add_argument("--boards", type=int, default=500, help="board entities (default 500)")
    shop.add_argument("--train-pairs", type=int, default=20000, help="train rows (default 20000)")
    shop.add_argument("--eval-pairs", type=int, default=2000, help="eval rows (default 2000)")
    shop.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    shop.add_argument("--overwrite", action="store_true", help="replace --out when it holds files")
    shop.set_defaults(func=_cmd_data_shop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
