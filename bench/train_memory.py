"""Peak memory of `omnikern train --data` against the catalogue's size.

    python bench/train_memory.py [--products 500000,2000000] [--steps 2] [--out FILE]

For each size: writes the generated shop (``omnikern data shop``, boards a tenth of the products,
50,000 train pairs) to a temporary directory, runs ``omnikern train`` on it for ``--steps`` steps
with a small model (tiny encoder, 64-d output, so the model's own memory is small beside the
catalogue's), and records the child's peak private memory and peak resident set (polled from
``/proc``; see :func:`peak_of_child`) and its wall time.
Writes ``bench/results/train_memory_cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train_memory_cpu.json"
SMALL_MODEL = ['model.encoder="tiny"', "model.tiny_hidden=32", "model.output_dim=64", "model.item_hidden=[64]",
               "model.train_encoder_layers=-1", "train.num_pairs=256", "train.progress=false", 'loss.impl="torch"']


def omnikern(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "omnikern", *args], check=True, stdout=subprocess.DEVNULL)


def peak_of_child(args: list[str]) -> tuple[float, float, float]:
    """Runs ``python -m omnikern ARGS``: (peak private memory MiB, peak resident set MiB, seconds).

    The child's ``/proc/PID/status`` is polled every 20 ms. Private (anonymous) memory is what the
    process needs; the resident set also counts pages of the mapped feature files, which the kernel
    maps around each fault from the page cache and drops under pressure, so it overstates."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "omnikern", *args], stdout=subprocess.DEVNULL)
    anon = rss = 0
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            break
        fields = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                  if line.startswith(("RssAnon", "VmRSS"))}
        anon, rss = max(anon, fields.get("RssAnon", 0)), max(rss, fields.get("VmRSS", 0))
        time.sleep(0.02)
    if child.wait():
        raise SystemExit(f"omnikern {' '.join(args)} failed with exit status {child.returncode}")
    return anon / 1024, rss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default="500000,2000000", help="comma-separated catalogue sizes")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for products in [int(p) for p in args.products.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            omnikern("data", "shop", "--out", str(data), "--products", str(products), "--boards",
                     str(products // 10), "--train-pairs", "50000", "--eval-pairs", "1000")
            sets = [x for s in SMALL_MODEL for x in ("--set", s)]
            anon, rss, seconds = peak_of_child(["train", "--data", str(data), "--out", str(Path(tmp) / "run"),
                                           "--steps", str(args.steps), "--cache-dir", str(Path(tmp) / "cache"),
                                           *sets])
            size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        row = {"products": products, "boards": products // 10, "dataset_mib": round(size / 2**20, 1),
               "peak_private_mib": round(anon), "peak_rss_mib": round(rss), "seconds": round(seconds, 1)}
        print(row, flush=True)
        rows.append(row)
    result = {"date": datetime.date.today().isoformat(), "command": "python bench/train_memory.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {resource.getpagesize()} B pages", "steps": args.steps,
              "model": SMALL_MODEL, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
