"""``omnikern demo``: the main job on embedded defaults.

:func:`run_demo`: the recipe catalogue and all-MiniLM-L6-v2 (both from PyPI, offline) → the frozen
256-d legacy vectors (computed once, cached in ``~/.cache/omnikern``) → a small OmniSearchSage
trained on the CPU (the encoder's top layer, the projection, the learned item tower) → Recall@10,
Recall@100 and MRR on held-out queries through ``omnikern.Int8Index``, against zero-shot MiniLM
and against the legacy (fixed tower) index → a table → the trained model exported as a Triton model
repository, served by the real tritonserver, queried over gRPC and checked against the in-process
result (:func:`serve_and_query`). :func:`run_op_checks` (``--ops``) checks
the ops against their references in seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omnikern._atomic import write_text_atomic
from omnikern.data.queries import KINDS
from omnikern.index import Int8Index
from omnikern.models.checkpoint import load_query_tower
from omnikern.models.config import apply_overrides, load_config
from omnikern.models.recipe_eval import evaluate_recipe_model, format_table, write_results
from omnikern.ops.l2norm import l2_normalize
from omnikern.ops.reference import l2_normalize_ref
from omnikern.parity import SERVED_EMBEDDING_EPS, compare_topk, score_tolerance
from omnikern.recipe import ABLATIONS, build_data, build_encoder, export_for_serving, recipe_trainer
from omnikern.recipe import cache_dir as resolve_cache
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


def comparison_table(results: dict, ablations: dict | None = None) -> str:
    """Returns the headline table: Recall@10 per query kind for zero-shot MiniLM, the trained
    model (learned tower at 256 and full dim) and the trained query on the legacy (fixed) index."""
    towers = results["towers"]
    full = max(towers["learned"], key=int)
    rows = [("zero-shot MiniLM (256-d PCA)", towers["zero_shot"]["256"]["int8"])] if "zero_shot" in towers else []
    rows += [("trained, learned tower @256", towers["learned"]["256"]["int8"]),
             (f"trained, learned tower @{full}", towers["learned"][full]["int8"]),
             ("trained query @256 vs legacy index", towers["fixed"]["256"]["int8"])]
    for name, res in (ablations or {}).items():
        rows.append((f"{name}: learned @256", res["towers"]["learned"]["256"]["int8"]))
        rows.append((f"{name}: query @256 vs legacy", res["towers"]["fixed"]["256"]["int8"]))
    head = f"{'Recall@10 (held-out queries)':<38}" + "".join(f"{k:>12}" for k in KINDS)
    lines = [head, "-" * len(head)]
    for name, metrics in rows:
        lines.append(f"{name:<38}" + "".join(f"{metrics[k]['recall@10']:>12.3f}" for k in KINDS))
    return "\n".join(lines)


def _loss_curve(run: Path) -> dict[int, float]:
    with open(run / "scalars.csv", newline="", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def loss_agreement(fused_run: Path, reference_run: Path, fused: dict, reference: dict) -> dict:
    """Returns how closely two runs that differ only in the loss implementation agree: the
    largest |Δ loss| over the logged steps (absolute and relative) and |Δ Recall@10| per tower,
    dim and query kind (the goal: within 0.005)."""
    a, b = _loss_curve(fused_run), _loss_curve(reference_run)
    steps = sorted(set(a) & set(b))
    deltas = [abs(a[s] - b[s]) for s in steps]
    worst = max(range(len(steps)), key=deltas.__getitem__) if steps else None
    recall = {}
    for tower, dims in fused["towers"].items():
        if tower == "zero_shot":
            continue
        for dim, metrics in dims.items():
            for kind, values in metrics["int8"].items():
                other = reference["towers"][tower][dim]["int8"][kind]["recall@10"]
                recall[f"{tower}@{dim}/{kind}"] = abs(values["recall@10"] - other)
    pooled = [v for k, v in recall.items() if k.endswith("/all")]
    return {
        "steps_compared": len(steps),
        "loss_by_step": {s: [a[s], b[s]] for s in steps},
        "max_abs_loss_delta": max(deltas) if deltas else None,
        "max_rel_loss_delta": deltas[worst] / abs(a[steps[worst]]) if steps else None,
        "max_abs_recall10_delta": max(recall.values()) if recall else None,
        "max_abs_recall10_delta_all_queries": max(pooled) if pooled else None,
        "recall10_delta": recall,
    }


def format_agreement(agreement: dict) -> str:
    """One paragraph on :func:`loss_agreement`'s result."""
    if not agreement["steps_compared"]:
        return "fused vs reference loss: no logged steps in common (train longer than train.log_every)"
    return (f"fused vs reference loss, same seed: {agreement['steps_compared']} logged steps, largest |Δ loss| "
            f"{agreement['max_abs_loss_delta']:.2e} ({agreement['max_rel_loss_delta']:.1e} relative); largest "
            f"|Δ Recall@10| over towers and dims on all held-out queries "
            f"{agreement['max_abs_recall10_delta_all_queries'] or 0.0:.4f} (goal ≤ 0.005), per query kind "
            f"{agreement['max_abs_recall10_delta']:.4f}")


def run_demo(cache_dir: str | None = None, out: str | None = None, steps: int | None = None,
             ablations: bool = False, serve: bool = True) -> int:
    """Trains and evaluates the demo model; prints the tables; returns 0.

    Raises:
        CatalogueNotInstalledError / FileNotFoundError: the catalogue or encoder package is missing.
    """
    start = time.perf_counter()
    config = demo_config(cache_dir, steps)
    root = Path(out) if out else resolve_cache(config) / "demo"
    print(f"omnikern demo: torch {torch.__version__}, {torch.get_num_threads()} threads, run directory {root}")
    data = build_data(config, progress=True)
    sizes = data.queries.sizes()
    print(f"catalogue {len(data.recipes)} recipes ({sizes['train_recipes']} train / {sizes['eval_recipes']} eval), "
          f"featuriser {data.featuriser_name}, legacy vectors {tuple(data.legacy.vectors.shape)} "
          f"[{time.perf_counter() - start:.0f} s]")

    def train_and_eval(name: str, overrides: list[str], zero_shot: bool) -> dict:
        cfg = apply_overrides(demo_config(cache_dir, steps), overrides)
        run = root / name
        trainer = recipe_trainer(cfg, run, data=data, resume=run if (run / "latest.json").is_file() else None)
        trainer.train()
        baseline = build_encoder(cfg, len(data.tokenizer)) if zero_shot else None
        results = evaluate_recipe_model(trainer.model, data, zero_shot=baseline)
        write_results(results, run, "results")
        if name == "full":
            tower_dir, index_path = export_for_serving(trainer.model, data, run)
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
    print(format_table(results))
    print()
    table = comparison_table(results, extra)
    if "reference_loss" in extra:
        agreement = loss_agreement(root / "full", root / "reference_loss", results, extra["reference_loss"])
        extra["reference_loss"]["agreement"] = agreement
        table += "\n\n" + format_agreement(agreement)
    print(table)
    write_text_atomic(root / "demo_table.txt", table + "\n")
    write_text_atomic(root / "demo_results.json", json.dumps({"full": results, **extra}, indent=1))
    served = serve_and_query(root / "full", data) if serve else None
    print(f"total {time.perf_counter() - start:.0f} s; results in {root}")
    return 1 if served is False else 0


def serve_and_query(run: Path, data, num_queries: int = 64) -> bool:
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
    titles = {int(recipe.id): recipe.title for recipe in data.recipes}
    texts = [query.text for query in data.queries.eval[:num_queries]]
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
