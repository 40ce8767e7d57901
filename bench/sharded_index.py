"""One Int8Index against a ShardedIndex of the same rows: memory per shard, build time, search q/s,
and that both answer the same.

    python bench/sharded_index.py [--rows 10000000] [--dim 256] [--shards 4] [--rounds 5]

Rows are random unit vectors made and added in chunks of 1M (the float rows are never all in
memory). Search: ``--batch`` queries per call, k = 10, C++ kernel; the single and the sharded index
are timed in alternation, ``--rounds`` times each, medians reported. Writes
``bench/results/sharded_index_cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != BENCH_DIR]

import torch  # noqa: E402

from omnikern.index import Int8Index  # noqa: E402
from omnikern.sharded_index import ShardedIndex  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sharded_index_cpu.json"
CHUNK = 1_000_000


def chunks(rows: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        x = torch.randn(n, dim, generator=g)
        yield start, torch.nn.functional.normalize(x, dim=1), torch.arange(start, start + n, dtype=torch.int64)


def index_bytes(index: Int8Index) -> int:
    return len(index) * (index.dim + 4 + 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    # Build: the single index, then the shards (contiguous ranges of the same rows).
    t = time.perf_counter()
    single = Int8Index(args.dim)
    for _, x, ids in chunks(args.rows, args.dim):
        single.add(x, ids)
    single_build = time.perf_counter() - t
    t = time.perf_counter()
    per = -(-args.rows // args.shards)
    shards = [Int8Index(args.dim) for _ in range(args.shards)]
    for start, x, ids in chunks(args.rows, args.dim):
        for s in range(args.shards):
            lo, hi = max(start, s * per), min(start + x.shape[0], (s + 1) * per)
            if lo < hi:
                shards[s].add(x[lo - start:hi - start], ids[lo - start:hi - start])
    sharded = ShardedIndex(shards)
    sharded_build = time.perf_counter() - t
    print(f"built {args.rows:,} x {args.dim}: one index {single_build:.1f} s, {args.shards} shards {sharded_build:.1f} s")

    queries = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(1)), dim=1)
    want = single.search(queries, args.k, impl="cpp")
    got = sharded.search(queries, args.k, impl="cpp")
    identical = bool(torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]))
    times = {"single": [], "sharded": []}
    for _ in range(args.rounds):
        for name, index in (("single", single), ("sharded", sharded)):
            t = time.perf_counter()
            index.search(queries, args.k, impl="cpp")
            times[name].append(time.perf_counter() - t)
    qps = {name: args.batch / statistics.median(values) for name, values in times.items()}
    print(f"search, {args.batch} queries, k={args.k}: one index {qps['single']:.1f} q/s, "
          f"{args.shards} shards {qps['sharded']:.1f} q/s; identical results: {identical}")
    record = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/sharded_index.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads)",
        "rows": args.rows, "dim": args.dim, "shards": args.shards, "k": args.k, "batch": args.batch,
        "bytes_single": index_bytes(single), "bytes_per_shard": [index_bytes(s) for s in shards],
        "build_seconds": {"single": round(single_build, 2), "sharded": round(sharded_build, 2)},
        "search_seconds": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "queries_per_second": {name: round(v, 1) for name, v in qps.items()},
        "identical_results": identical,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
