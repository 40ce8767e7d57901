"""Benchmark every omnikern op against its peers in one run.

    python bench/kernels.py [--device cpu|cuda] [--quick] [--ops l2norm,loss,...]

Writes ``bench/results/<device>.json`` (environment + one row per case, with ratios between
providers of the same op, mode and size) and ``bench/plots/<op>_<mode>_time.png``, and prints a
table. Each kernel family contributes ``bench/cases_<family>.py`` with ``cases(device, quick)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402

FAMILIES = ["l2norm", "loss", "sketch", "int8", "text", "pooling", "ngram"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timing budget (~a minute on CPU)")
    parser.add_argument("--ops", default=",".join(FAMILIES), help=f"comma-separated families out of {FAMILIES}")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path (default bench/results/<device>.json)")
    parser.add_argument("--plots", type=Path, default=BENCH_DIR / "plots")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    unknown = sorted(set(args.ops.split(",")) - set(FAMILIES))
    if unknown:
        parser.error(f"--ops: unknown families {unknown}; known: {FAMILIES}")

    budget_s = 0.2 if args.quick else 1.0
    env = harness.environment(args.device)
    bandwidth = harness.measure_bandwidth(args.device)
    env["copy_bandwidth_gb_s"] = bandwidth
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  copy bandwidth {bandwidth:.1f} GB/s")

    rows: list[dict] = []
    for family in args.ops.split(","):
        try:
            module = importlib.import_module(f"cases_{family}")
        except ModuleNotFoundError as error:
            if error.name == f"cases_{family}":
                print(f"[{family}] no benchmark cases yet, skipped")
                continue
            raise
        family_cases = module.cases(args.device, args.quick)
        print(f"[{family}] {len(family_cases)} cases")
        for case in family_cases:
            rows.append(harness.run_case(case, args.device, budget_s))

    harness.add_ratios(rows, bandwidth)
    out = args.out or BENCH_DIR / "results" / f"{harness.device_slug(env['device'])}{'-quick' if args.quick else ''}.json"
    harness.write_json_atomic(out, {"environment": env, "quick": args.quick, "rows": rows})
    plots = harness.write_plots(rows, args.plots)
    print(harness.format_table(rows))
    print(f"\nwrote {out} and {len(plots)} plots in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
