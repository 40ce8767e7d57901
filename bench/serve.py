"""Serving benchmark: throughput and p50/p90/p99 latency of ``omnisearch`` (the ensemble and the fused
python model) on a real tritonserver, next to the in-process throughput of the same model on the same machine.

The model: the zero-shot MiniLM query tower (tokenizer → 6-layer transformer → mean pool →
projection to 512 → L2) and an int8 index of the recipe catalogue (3,129 rows; random unit vectors
if the catalogue is not installed), k = 10. One query per request.

Server: the repository from ``export_triton`` (dynamic batching, max batch 64), started on
127.0.0.1, once per encoder runtime (``--encoder-runtime torch onnx``: the tower in torch, or
exported to ONNX and run by onnxruntime) and omnisearch pipeline (``--pipeline ensemble fused``:
Triton's ensemble of the three step models, or the three steps in one python-backend model);
``--rounds N`` alternates the pipelines N times (ensemble, fused, ensemble, ...) so that both see
the same background load, and reports each round and the per-concurrency median. The load is a bounded tritonclient loop (perf_analyzer
is not usable from PyPI here: ``pip install perf-analyzer`` finds only a 0.1.0 placeholder): ``c``
threads, each with its own client, send requests back to back for ``--duration`` seconds or until
``--max-requests``, after a warm-up. In-process: the same tokenizer, the same encoder runtime and
the same index in this process, batches of ``c`` queries back to back (the work the server's
dynamic batcher can form at concurrency ``c``); ``server_over_inprocess`` divides by that, and
``server_over_inprocess_torch`` by the torch in-process path. The JSON records the load average
(``uptime``) before and after each variant: the 2 cores are shared.

Reading the numbers (2 shared cores, tritonserver 2.51 CPU): with the ensemble each request crosses three python-backend
stubs (tokenizer, encoder, scorer), separate processes woken through shared memory; on a busy
machine each hop costs about a millisecond (the scorer's execute takes 0.4 ms in process but 1.8 ms
in the server at concurrency 1). The defaults (one instance and one thread per stub, a batcher
queue delay of 100 µs) were the best of those tried: two encoder instances and two threads per
instance (OpenMP spin-waiting against the other stubs; onnxruntime without spinning too) were
slower; no delay lost throughput at 4 and 16, 500 µs lost it at 1 (numbers in export_triton's
docstring). ``mean_batch`` shows what the dynamic batcher achieved.

Usage: ``python bench/serve.py [--quick] [--protocol http|grpc] [--encoder-runtime torch onnx]
[--pipeline ensemble fused] [--rounds N]``; writes
``bench/results/serve-<device>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import device_slug, environment  # noqa: E402

# Short search queries, written for this benchmark.
QUERIES = [
    "tomato soup", "chocolate cake", "vegan chili", "banana bread", "grilled chicken", "apple pie",
    "pancakes", "lentil curry", "fish tacos", "mushroom risotto", "lemon tart", "beef stew",
    "potato salad", "garlic bread", "pumpkin soup", "shortbread", "fried rice", "carrot cake",
    "ginger cookies", "spinach quiche", "crème brûlée", "pad thai", "corn muffins", "onion rings",
    "stuffed peppers", "rice pudding", "chicken noodle soup", "blueberry scones", "bean burrito",
    "roast lamb with rosemary", "easy bread without yeast", "gluten free brownies",
]


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 90, 99)}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (``uptime``): how busy the shared cores were."""
    return [round(x, 2) for x in os.getloadavg()]


def in_process_encoder(tower, runtime: str, onnx_path: Path | None, threads: int):
    """``texts -> (B, D) embeddings`` the way the server's encoder runs them, in this process:
    the tower's tokenizer, then the torch tower or an onnxruntime session on the exported graph."""
    if runtime == "torch":
        return lambda texts: tower(**tower.tokenize(texts))
    from omnikern.serve import contract as C
    from omnikern.serve.onnx_encoder import encoder_session

    session = encoder_session(onnx_path, threads=threads)

    def encode(texts):
        tokens = tower.tokenize(texts)
        feeds = {C.INPUT_IDS: tokens["input_ids"].numpy(), C.ATTENTION_MASK: tokens["attention_mask"].numpy()}
        return torch.from_numpy(session.run([C.EMBEDDING], feeds)[0])

    return encode


def in_process(encode, index, batch: int, duration_s: float, max_requests: int) -> dict:
    """Queries/s of tokenize + encode + search in this process, ``batch`` queries per call."""
    rng = np.random.default_rng(0)
    done, latencies = 0, []
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            index.search(encode(QUERIES[:batch]), 10)
        start = time.perf_counter()
        while time.perf_counter() - start < duration_s and done < max_requests:
            texts = [QUERIES[i] for i in rng.integers(0, len(QUERIES), size=batch)]
            t0 = time.perf_counter()
            index.search(encode(texts), 10)
            latencies.append((time.perf_counter() - t0) * 1e3)
            done += batch
        elapsed = time.perf_counter() - start
    return {"batch": batch, "queries": done, "seconds": elapsed, "qps": done / elapsed,
            **_percentiles(latencies)}


def load_loop(url: str, protocol: str, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """``concurrency`` threads send one-query requests back to back; returns throughput and latency."""
    from omnikern.serve import Client

    latencies, failures, lock = [], [], threading.Lock()
    issued = [0]
    barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(n: int) -> None:
        rng = np.random.default_rng(n)
        with Client(url, protocol=protocol) as client:
            client.search([QUERIES[0]], k=10)  # connect + warm
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                text = QUERIES[int(rng.integers(0, len(QUERIES)))]
                t0 = time.perf_counter()
                try:
                    client.search([text], k=10)
                except Exception as error:  # noqa: BLE001 - counted and reported
                    failures.append(repr(error))
                    continue
                elapsed = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600  # set for real once everyone is connected
    barrier.wait()
    start = time.perf_counter()
    stop_at[0] = start + duration_s
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "failures": len(failures),
            "failure_examples": failures[:3], "seconds": elapsed, "qps": len(latencies) / elapsed,
            **_percentiles(latencies or [float("nan")])}


def batch_stats(url: str) -> dict[str, tuple[int, int]]:
    """(inferences, executions) so far of each backend model, from the server's statistics (gRPC or HTTP)."""
    import tritonclient.http as httpclient

    out = {}
    with httpclient.InferenceServerClient(url) as client:
        for entry in client.get_inference_statistics()["model_stats"]:
            out[entry["name"]] = (int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0)))
    return out


def serve_points(repo: Path, args, duration: float, pipeline: str) -> list[dict]:
    """Starts the server on ``repo`` and measures every concurrency; each point also carries the
    mean rows per execute() of each backend model (what the dynamic batcher achieved)."""
    from omnikern.serve import TritonServer

    with TritonServer(repo, startup_timeout_s=300) as server:
        url = server.url_grpc if args.protocol == "grpc" else server.url_http
        load_loop(url, args.protocol, 2, 2.0, 200)  # warm-up of every model instance
        served = []
        backend_models = ("tokenizer", "query_encoder", "scorer") if pipeline == "ensemble" else ("omnisearch",)
        for c in args.concurrency:
            before = batch_stats(server.url_http)
            point = load_loop(url, args.protocol, c, duration, args.max_requests)
            after = batch_stats(server.url_http)
            point["mean_batch"] = {name: round((after[name][0] - before[name][0]) /
                                               max(1, after[name][1] - before[name][1]), 2)
                                   for name in backend_models if name in after}
            served.append(point)
    return served


def _row(mine: dict, theirs: dict) -> dict:
    return {**{f"server_{k}": v for k, v in mine.items()}, **{f"inprocess_{k}": v for k, v in theirs.items()},
            "server_over_inprocess": mine["qps"] / theirs["qps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per point instead of 10 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument("--max-queue-delay-us", type=int, default=100, help="the dynamic batchers' delay")
    parser.add_argument("--index-rows", type=int, default=3129, help="index size (default: the catalogue's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/tokenizer threads, in process and per server instance (0 = all cores)")
    parser.add_argument("--instances", type=int, default=1, help="encoder and scorer instances in the server")
    parser.add_argument("--index-class", default="omnikern:Int8Index",
                        help="module:Class of the index, here and in the server (for stand-ins)")
    parser.add_argument("--encoder-runtime", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"],
                        help="the encoder variants to measure, one server each (export_triton(encoder_runtime=))")
    parser.add_argument("--pipeline", nargs="+", choices=("ensemble", "fused"), default=["ensemble", "fused"],
                        help="omnisearch variants to measure, one server each (export_triton(pipeline=))")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the pipelines this many times; rows report the median per concurrency")
    parser.add_argument("--out", default=None, help="results file (default bench/results/serve-<device>.json)")
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)

    import importlib

    from omnikern.serve import export_triton
    from omnikern.models.encoders import zero_shot_tower

    module, _, name = args.index_class.partition(":")
    Int8Index = getattr(importlib.import_module(module), name)  # noqa: N806 - a class
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    env = environment(device)
    tower = zero_shot_tower().to(device)
    with tempfile.TemporaryDirectory(prefix="omnikern-bench-serve-") as tmp:
        index_path = Path(tmp) / "index.safetensors"
        # Random unit rows, as many as the catalogue has: the timing does not depend on their values,
        # and embedding 3,129 recipe documents would take minutes on this CPU.
        index = Int8Index(tower.output_dim)
        generator = torch.Generator().manual_seed(0)
        vectors = torch.nn.functional.normalize(torch.randn(args.index_rows, tower.output_dim, generator=generator), dim=1)
        index.add(vectors, torch.arange(args.index_rows, dtype=torch.int64))
        index.save(index_path)
        if device == "cuda":
            index = Int8Index.load(index_path, device=device)
        print(f"model: zero-shot MiniLM query tower -> 512, int8 index of {len(index)} rows, k=10, "
              f"device {env['device']}, {args.threads} thread(s), {args.instances} instance(s)")

        variants = {}
        for runtime in args.encoder_runtime:
            repos = {pipeline: export_triton(tower, index_path, Path(tmp) / f"repo-{runtime}-{pipeline}",
                                             encoder_runtime=runtime, pipeline=pipeline,
                                             max_queue_delay_us=args.max_queue_delay_us, index_class=args.index_class,
                                             torch_threads=args.threads, instance_count=args.instances,
                                             instance_kind="KIND_GPU" if device == "cuda" else "KIND_CPU")
                     for pipeline in args.pipeline}
            # In process: the same tokenizer, the same encoder runtime (torch, or onnxruntime on the
            # exported graph) and the same index; every server number is compared with this one.
            first = repos[args.pipeline[0]]
            onnx_path = first / "query_encoder" / "1" / "query_tower.onnx"
            in_load = {"before": load_average()}
            encode = in_process_encoder(tower, runtime, onnx_path, args.threads)
            local = [in_process(encode, index, c, duration, args.max_requests) for c in args.concurrency]
            in_load["after"] = load_average()
            del encode  # the server gets the cores' attention
            rounds = {pipeline: [] for pipeline in args.pipeline}
            for _ in range(args.rounds):
                for pipeline in args.pipeline:  # interleaved: both see the same background load
                    load = {"before": load_average()}
                    served = serve_points(repos[pipeline], args, duration, pipeline)
                    load["after"] = load_average()
                    rounds[pipeline].append({"rows": [_row(mine, theirs) for mine, theirs in zip(served, local)],
                                             "load_average": load})
            for pipeline, runs in rounds.items():
                median = []
                for j, c in enumerate(args.concurrency):
                    points = sorted((r["rows"][j] for r in runs), key=lambda r: r["server_qps"])
                    median.append(points[len(points) // 2])
                variants[f"{runtime}/{pipeline}"] = {"encoder_runtime": runtime, "pipeline": pipeline, "rows": median,
                                                     "rounds": runs, "inprocess_load_average": in_load}

    torch_local = {}
    for variant in variants.values():
        if variant["encoder_runtime"] == "torch":
            torch_local = {r["inprocess_batch"]: r["inprocess_qps"] for r in variant["rows"]}
    for name, variant in variants.items():
        print(f"\n{name}: encoder runtime {variant['encoder_runtime']}, omnisearch {variant['pipeline']}; "
              f"median of {len(variant['rounds'])} round(s); load average before/after each round: "
              f"{[r['load_average'] for r in variant['rounds']]}")
        print(f"{'conc':>4} {'server q/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'fail':>5} "
              f"{'in-proc q/s':>11} {'ratio':>6}  q/s per round; mean rows per execute")
        for j, r in enumerate(variant["rows"]):
            if r["inprocess_batch"] in torch_local:
                r["server_over_inprocess_torch"] = r["server_qps"] / torch_local[r["inprocess_batch"]]
            per_round = [round(run["rows"][j]["server_qps"], 1) for run in variant["rounds"]]
            print(f"{r['server_concurrency']:>4} {r['server_qps']:>10.1f} {r['server_p50_ms']:>8.1f} "
                  f"{r['server_p90_ms']:>8.1f} {r['server_p99_ms']:>8.1f} {r['server_failures']:>5} "
                  f"{r['inprocess_qps']:>11.1f} {r['server_over_inprocess']:>6.2f}  {per_round}; {r['server_mean_batch']}")
    result = {"environment": env, "protocol": args.protocol, "seconds_per_point": duration,
              "max_queue_delay_us": args.max_queue_delay_us, "index_rows": args.index_rows,
              "threads": args.threads, "instances": args.instances, "cpu_count": os.cpu_count(),
              "rounds": args.rounds, "variants": variants}
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"serve-{device_slug(env['device'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    tmp_out.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
