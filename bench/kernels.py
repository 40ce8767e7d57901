"""Benchmark every omnikern op against its peers in one run.

    python bench/kernels.py [--device cpu|cuda] [--quick] [--ops l2norm,loss,...]
                            [--out PATH] [--append] [--budget-s S] [--case-limit-s S]

Writes ``bench/results/<device>.json`` (environment + one row per case, with ratios between
providers of the same op, mode and size) and ``bench/plots/<op>_<mode>_time.png`` (when matplotlib
is installed), and prints a table. Each kernel family contributes ``bench/cases_<family>.py`` with
``cases(device, quick)``: a list or a generator of ``harness.Case`` (a generator defers each case's
set-up, so that set-up counts against the run's time limits too).

Made for a device run that may be cut short: every row is printed as it completes and the results
file is rewritten (atomically) after every case, so whatever ran is on disk if the process is killed.
``--budget-s`` stops starting cases once the run has used that much time (the rest is recorded as not
run); ``--case-limit-s`` bounds each case (first compile included); ``--append`` adds this run's rows
to an existing results file, so that one process per family can share one file.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402

FAMILIES = ["l2norm", "loss", "sketch", "int8", "text", "pooling", "ngram"]


def _load_existing(path: Path) -> dict | None:
    import json

    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("rows"), list) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timing budget (~a minute on CPU)")
    parser.add_argument("--ops", default=",".join(FAMILIES), help=f"comma-separated families out of {FAMILIES}")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path (default bench/results/<device>.json)")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out and add this run's")
    parser.add_argument("--plots", type=Path, default=BENCH_DIR / "plots")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting new cases after this many seconds")
    parser.add_argument("--case-limit-s", type=float, default=None,
                        help="wall limit per case, set-up and first compile included (default: none on CPU, 60 on CUDA)")
    parser.add_argument("--timing-s", type=float, default=None,
                        help="timing budget per case (default 0.2 with --quick, else 1.0 on CPU, 0.3 on CUDA)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    families = [f for f in args.ops.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--ops: unknown families {unknown}; known: {FAMILIES}")
    for name in ("budget_s", "case_limit_s", "timing_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")

    started = time.monotonic()
    deadline = None if args.budget_s is None else started + args.budget_s
    case_limit = args.case_limit_s if args.case_limit_s is not None else (60.0 if args.device == "cuda" else None)
    budget_s = args.timing_s or (0.2 if args.quick else (0.3 if args.device == "cuda" else 1.0))

    # `timeout` sends SIGTERM: leave through the normal exit path so the last write below says where it stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"terminated (signal {signum})"))

    out = args.out or BENCH_DIR / "results" / f"{harness.device_slug(harness.device_name(args.device))}{'-quick' if args.quick else ''}.json"
    existing = _load_existing(out) if args.append else None
    if existing is not None and existing.get("environment", {}).get("device_type") == args.device:
        env = existing["environment"]
        rows: list[dict] = existing["rows"]
        status: dict = existing.get("families", {})
    else:
        env = harness.environment(args.device)
        env["copy_bandwidth_gb_s"] = harness.measure_bandwidth(args.device)
        rows, status = [], {}
    bandwidth = env["copy_bandwidth_gb_s"]
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  copy bandwidth {bandwidth:.1f} GB/s",
          flush=True)

    def save() -> None:
        harness.add_ratios(rows, bandwidth)
        harness.write_json_atomic(out, {"environment": env, "quick": args.quick, "families": status, "rows": rows})

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def limit() -> float | None:
        left = remaining()
        return case_limit if left is None else (left if case_limit is None else min(case_limit, left))

    current = None
    try:
        for family in families:
            current = family
            family_started = time.monotonic()
            status[family] = {"status": "running", "cases": 0}
            save()
            try:
                module = importlib.import_module(f"cases_{family}")
            except ModuleNotFoundError as error:
                if error.name != f"cases_{family}":
                    raise
                print(f"[{family}] no benchmark cases yet, skipped", flush=True)
                status[family] = {"status": "no cases"}
                continue
            print(f"[{family}]", flush=True)
            cases = iter(module.cases(args.device, args.quick))
            while True:
                left = remaining()
                if left is not None and left < 1:
                    status[family]["status"] = "stopped: --budget-s used up (later cases not run)"
                    print(f"[{family}] {status[family]['status']}", flush=True)
                    break
                try:  # a generator prepares the next case here (data, reference results): bound it too
                    with harness.time_limit(limit(), f"[{family}] preparing case {status[family]['cases'] + 1}"):
                        case = next(cases)
                except StopIteration:
                    status[family]["status"] = "done"
                    break
                except Exception as error:  # noqa: BLE001 - the other families still run
                    status[family]["status"] = f"stopped: {type(error).__name__}: {error}"[:300]
                    print(f"[{family}] {status[family]['status']}", flush=True)
                    break
                row = harness.run_case(case, args.device, budget_s, limit())
                rows.append(row)
                status[family]["cases"] += 1
                status[family]["seconds"] = round(time.monotonic() - family_started, 1)
                save()
                print(harness.format_row(row), flush=True)
            status[family]["seconds"] = round(time.monotonic() - family_started, 1)
            save()
    except BaseException as error:  # SystemExit from SIGTERM, KeyboardInterrupt: record, then leave
        if current is not None and status.get(current, {}).get("status") == "running":
            status[current]["status"] = f"interrupted: {type(error).__name__}: {error}"[:300]
        save()
        raise

    print("\n" + harness.format_table(rows), flush=True)
    print(f"\nwrote {out} ({len(rows)} rows)", flush=True)
    plots = harness.write_plots(rows, args.plots)
    if plots is None:
        print("plots skipped: matplotlib is not installed (the JSON and the table above hold every number)")
    else:
        print(f"wrote {len(plots)} plots in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
