"""omnikern's loss against sentence-transformers' on the same embeddings: forward + backward time
and peak memory on CPU (docs/sentence-transformers.md, "Bench").

Providers (all on the same fp32 embeddings, scale 20, no ids):
  omnikern         SampledSoftmaxRankingLoss (fused, chunked torch path on CPU), one dim
  mnrl             MultipleNegativesRankingLoss.compute_loss_from_embeddings
  omnikern_mrl     SampledSoftmaxRankingLoss with matryoshka_dims (one pass)
  mnrl_mrl         MatryoshkaLoss(MNRL) on embeddings: Σ_d w_d · MNRL(normalised prefix d)
  cached_mnrl      CachedMultipleNegativesRankingLoss.calculate_loss(with_backward=True), mini-batch 32
                   (the loss stage of GradCache; its extra model forwards are not counted)

Time: median of interleaved repeats (one round runs every provider once) in this process.
Memory: one fresh subprocess per (case, provider); the peak RSS (VmHWM, reset before the run)
during its first forward + backward minus the RSS after set-up (inputs allocated), in MiB.

  python bench/st_loss.py            # B = 4096, D = 384, 0 and 1 hard negatives, 3 rounds
  python bench/st_loss.py --quick    # B = 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

THREADS = 2
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# bench/kernels.py would shadow the `kernels` package transformers probes for: bench/ off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != BENCH_DIR]
PROVIDERS = ("omnikern", "mnrl", "omnikern_mrl", "mnrl_mrl", "cached_mnrl")
MRL_DIMS = [384, 256, 128, 64]


def setup(provider: str, B: int, D: int, negatives: int, seed: int = 0):
    """Returns ``run()`` doing one forward + backward of ``provider`` on fixed embeddings."""
    import torch
    import torch.nn.functional as F
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from omnikern.integrations.sentence_transformers import SampledSoftmaxRankingLoss

    gen = torch.Generator().manual_seed(seed)
    columns = [torch.randn(B, D, generator=gen).requires_grad_(True) for _ in range(2 + negatives)]
    dims = [d for d in MRL_DIMS if d <= D]
    if provider == "omnikern":
        loss = SampledSoftmaxRankingLoss(None, matryoshka_dims=[D])
        compute = lambda: loss.compute_loss_from_embeddings(columns, None)  # noqa: E731
    elif provider == "omnikern_mrl":
        loss = SampledSoftmaxRankingLoss(None, matryoshka_dims=dims)
        compute = lambda: loss.compute_loss_from_embeddings(columns, None)  # noqa: E731
    elif provider == "mnrl":
        loss = MultipleNegativesRankingLoss(None)
        compute = lambda: loss.compute_loss_from_embeddings(columns, None)  # noqa: E731
    elif provider == "mnrl_mrl":
        loss = MultipleNegativesRankingLoss(None)

        def compute():
            # What MatryoshkaLoss does around MNRL: truncate, re-normalise, weight 1 each.
            return sum(loss.compute_loss_from_embeddings([F.normalize(c[:, :d], dim=-1) for c in columns], None)
                       for d in dims)
    elif provider == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(torch.nn.Sequential(torch.nn.Identity()), mini_batch_size=32)

        def compute():
            # The loss stage with backward per mini-batch, as forward_cached runs it.
            return loss.calculate_loss([[c] for c in columns], None, with_backward=True)
    else:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")

    def run() -> float:
        for c in columns:
            c.grad = None
        start = time.perf_counter()
        value = compute()
        if value.requires_grad:
            value.backward()
        return time.perf_counter() - start

    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_peak(provider: str, B: int, D: int, negatives: int) -> tuple[float, float]:
    """(peak RSS growth in MiB over the RSS after set-up, seconds) of one forward + backward in
    this process: the kernel's high-water mark (VmHWM) is reset first (Linux: clear_refs 5)."""
    run = setup(provider, B, D, negatives)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    seconds = run()
    return (_status_kib("VmHWM") - before) / 1024, seconds


def peak_mib(provider: str, B: int, D: int, negatives: int) -> tuple[float, float]:
    """:func:`measure_peak` in a fresh process (no allocator cache from other providers)."""
    code = (
        "import importlib.util, json, torch; torch.set_num_threads(%d);"
        "spec = importlib.util.spec_from_file_location('st_loss', %r); st_loss = importlib.util.module_from_spec(spec);"
        "spec.loader.exec_module(st_loss); print(json.dumps(st_loss.measure_peak(%r, %d, %d, %d)))"
    ) % (THREADS, os.path.join(BENCH_DIR, "st_loss.py"), provider, B, D, negatives)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B = 1024 instead of 4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: the bench measures the CPU torch path, not the interpreter")
    import torch

    torch.set_num_threads(THREADS)
    B, D = (1024 if args.quick else 4096), 384
    rows = []
    for negatives in (0, 1):
        runs = {p: setup(p, B, D, negatives) for p in PROVIDERS}
        for p in PROVIDERS:  # warm-up
            runs[p]()
        times = {p: [] for p in PROVIDERS}
        for _ in range(args.rounds):
            for p in PROVIDERS:
                times[p].append(runs[p]())
        del runs
        for p in PROVIDERS:
            mib, _ = peak_mib(p, B, D, negatives)
            row = dict(provider=p, B=B, D=D, hard_negatives=negatives, median_s=statistics.median(times[p]),
                       times_s=times[p], peak_extra_mib=mib)
            rows.append(row)
            print(f"B={B} D={D} neg={negatives} {p:13s} {row['median_s']:.3f} s  {mib:7.0f} MiB", flush=True)
    meta = dict(date=time.strftime("%Y-%m-%d"), threads=THREADS, torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), cpus=os.cpu_count(), command=" ".join(sys.argv), rows=rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
