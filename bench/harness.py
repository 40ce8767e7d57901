"""The benchmark harness: time cases, measure memory, compute ratios, write JSON and plots.

Each kernel family contributes ``bench/cases_<family>.py`` with ``cases(device, quick) -> list[Case]``.
A case is one (op, provider, mode, size) cell; cells that share (op, mode, size) are compared with
each other, so every ratio in a results file comes from one run on one machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

QUANTILES = (0.2, 0.5, 0.8)


@dataclasses.dataclass
class Case:
    """One benchmark cell.

    ``fn`` is the timed work (one call = one iteration). ``setup`` (optional) runs once before
    timing. ``bytes_moved`` / ``flops`` are the op's minimal traffic and arithmetic, for GB/s,
    TFLOP/s and the roofline fraction. ``extra`` is copied into the row (recall, bytes per vector...);
    two keys in it are read by :func:`add_ratios`: ``peak_tflop_per_s`` (the measured compute
    roofline for this case's arithmetic) and ``baseline_size`` (the size of the same op, provider and
    mode that this row's time and memory are compared with, e.g. all prefixes vs one).

    ``check=True``: not timed; ``fn`` runs once and returns a dict of measured errors that must hold
    ``ok`` (bool), copied into the row (a correctness check at bench size). ``skipped``: the case
    cannot run here (a peer that is not installed); the row records why instead of vanishing.
    ``timeout_s`` overrides the per-case time limit (compiling cases need more).
    """

    op: str
    provider: str
    mode: str
    size: str
    fn: Callable[[], object]
    bytes_moved: int | None = None
    flops: int | None = None
    setup: Callable[[], None] | None = None
    extra: dict | None = None
    check: bool = False
    skipped: str | None = None
    timeout_s: float | None = None


class CaseTimeout(Exception):
    """A case (or the preparation of the next one) ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (SIGALRM).

    A device run has a fixed wall budget and a first compile can take minutes: one slow case must
    cost its limit, not the rest of the run. The signal interrupts Python code, a compiler
    subprocess wait and a sleep; a blocking C call (a CUDA synchronise) finishes first, so the
    limit is soft by at most one kernel. No-op with ``seconds`` None or outside the main thread.
    """
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"{what}: over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------


def _quantiles(samples: list[float]) -> list[float]:
    ordered = sorted(samples)
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES]


def time_cpu(fn: Callable[[], object], budget_s: float, max_repeats: int = 200) -> list[float]:
    """20/50/80 % quantiles in ms of ``fn`` on the CPU: one warm-up call, then repeats until the
    time budget (at least 3 repeats)."""
    fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return _quantiles(samples)


def time_cuda(fn: Callable[[], object], budget_s: float) -> list[float]:
    """20/50/80 % quantiles in ms with CUDA events (``triton.testing.do_bench``)."""
    import triton.testing

    return list(triton.testing.do_bench(fn, warmup=25, rep=max(50, int(budget_s * 1e3)), quantiles=list(QUANTILES)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_cpu(fn: Callable[[], object]) -> int:
    """Peak growth of the resident set during one call of ``fn`` (sampled every 0.5 ms)."""
    gc.collect()
    baseline = _rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak, _rss_bytes()) - baseline)


def peak_memory_cuda(fn: Callable[[], object]) -> int:
    """Peak allocation beyond what was allocated before one call of ``fn``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - baseline)


def measure_matmul_peak(device: str, dtype: torch.dtype) -> float | None:
    """Achieved dense matmul throughput in TFLOP/s (TOP/s for int8) on a large square product: the
    compute roofline that a GEMM-bound case is compared with. None where the product cannot run."""
    n = 8192 if device == "cuda" else 512
    try:
        if dtype == torch.int8:
            a = torch.randint(-127, 128, (n, n), device=device, dtype=torch.int8)
            b = torch.randint(-127, 128, (n, n), device=device, dtype=torch.int8).T  # column-major, as _int_mm wants
            fn = lambda: torch._int_mm(a, b)  # noqa: E731
        else:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            fn = lambda: a @ b  # noqa: E731
        timer = time_cuda if device == "cuda" else time_cpu
        median_ms = timer(fn, budget_s=0.3)[1]
    except (RuntimeError, NotImplementedError):
        return None
    return 2 * n**3 / (median_ms * 1e-3) / 1e12


def measure_bandwidth(device: str) -> float:
    """Device copy bandwidth in GB/s (bytes read + written), the roofline for memory-bound ops."""
    n = (1 << 28) if device == "cuda" else (1 << 26)  # 1 GiB on GPU, 256 MiB on CPU, fp32
    src = torch.ones(n // 4, device=device)
    dst = torch.empty_like(src)
    timer = time_cuda if device == "cuda" else time_cpu
    median_ms = timer(lambda: dst.copy_(src), budget_s=0.5)[1]
    return 2 * n / (median_ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------
# Running and reporting
# ----------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model} ({os.cpu_count()} cores)"


def device_slug(name: str) -> str:
    """A file name for a device: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def environment(device: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        # A copy of a working tree (the device machine gets one) can differ from its HEAD: say so,
        # or the commit names code that did not run (the first H200 run recorded a stale HEAD).
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        if changed:
            commit += "+dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }


def run_case(case: Case, device: str, budget_s: float, limit_s: float | None = None) -> dict:
    """Times one case; an exception (a timeout included) becomes an ``error`` field instead of
    stopping the run. ``limit_s`` bounds the case's whole wall time (compile, timing, memory)."""
    row = {"op": case.op, "provider": case.provider, "mode": case.mode, "size": case.size}
    if case.skipped is not None:
        row["skipped"] = case.skipped
        row.update(case.extra or {})
        return row
    started = time.perf_counter()
    limit = case.timeout_s if case.timeout_s is not None else limit_s
    if limit is not None and limit_s is not None:
        limit = min(limit, limit_s)
    try:
        with time_limit(limit, f"{case.op} {case.provider} {case.mode} {case.size}"):
            if case.setup is not None:
                case.setup()
            if case.check:
                result = case.fn()
                if device == "cuda":
                    torch.cuda.synchronize()
            else:
                timer = time_cuda if device == "cuda" else time_cpu
                q20, q50, q80 = timer(case.fn, budget_s)
                memory = (peak_memory_cuda if device == "cuda" else peak_memory_cpu)(case.fn)
    except Exception as error:  # noqa: BLE001 - a failing peer must not stop the other rows
        row["error"] = f"{type(error).__name__}: {error}"[:300]
        row["wall_s"] = round(time.perf_counter() - started, 2)
        if device == "cuda":  # an out-of-memory case must not starve the next one
            gc.collect()
            torch.cuda.empty_cache()
        return row
    row["wall_s"] = round(time.perf_counter() - started, 2)
    if case.check:
        row.update(result)
        row.update(case.extra or {})
        return row
    row.update(ms_q20=q20, ms_median=q50, ms_q80=q80, peak_mem_bytes=memory)
    if case.bytes_moved:
        row["gb_per_s"] = case.bytes_moved / (q50 * 1e-3) / 1e9
    if case.flops:
        row["tflop_per_s"] = case.flops / (q50 * 1e-3) / 1e12
    if case.extra:
        row.update(case.extra)
    return row


def add_ratios(rows: list[dict], bandwidth_gb_s: float) -> None:
    """For each (op, mode, size): ``speedup_vs`` = provider's median / omnikern's; the fraction of
    the copy-bandwidth roofline where the op's bytes are known, of the compute roofline where the
    row carries ``peak_tflop_per_s``; and, for rows naming a ``baseline_size``, ``time_vs_baseline``
    and ``memory_vs_baseline`` against that size's row (same op, provider, mode). Idempotent: it
    runs again after every case, so that each partial results file is complete."""
    timed = [r for r in rows if "ms_median" in r]
    groups: dict[tuple, list[dict]] = {}
    for row in timed:
        groups.setdefault((row["op"], row["mode"], row["size"]), []).append(row)
    for group in groups.values():
        ours = [r for r in group if r["provider"] == "omnikern"]
        if not ours:
            continue
        ours_ms = ours[0]["ms_median"]
        ours[0]["speedup_vs"] = {r["provider"]: r["ms_median"] / ours_ms for r in group if r is not ours[0]}
    by_key = {(r["op"], r["provider"], r["mode"], r["size"]): r for r in timed}
    for row in timed:
        if "gb_per_s" in row and bandwidth_gb_s > 0:
            row["roofline_fraction"] = row["gb_per_s"] / bandwidth_gb_s
        if "tflop_per_s" in row and row.get("peak_tflop_per_s"):
            row["compute_roofline_fraction"] = row["tflop_per_s"] / row["peak_tflop_per_s"]
        base = by_key.get((row["op"], row["provider"], row["mode"], row.get("baseline_size")))
        if base is not None and base is not row:
            row["time_vs_baseline"] = row["ms_median"] / base["ms_median"]
            if base["peak_mem_bytes"]:
                row["memory_vs_baseline"] = row["peak_mem_bytes"] / base["peak_mem_bytes"]


def write_plots(rows: list[dict], plot_dir: Path) -> list[Path] | None:
    """One PNG per (op, mode): median time per size, one line per provider. None (and nothing
    written) where matplotlib is not installed: plots are optional, the JSON and table are not."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    keys = sorted({(r["op"], r["mode"]) for r in rows if "ms_median" in r})
    for op, mode in keys:
        selected = [r for r in rows if r["op"] == op and r["mode"] == mode and "ms_median" in r]
        sizes = list(dict.fromkeys(r["size"] for r in selected))
        fig, ax = plt.subplots(figsize=(7, 4))
        for provider in dict.fromkeys(r["provider"] for r in selected):
            points = {r["size"]: r["ms_median"] for r in selected if r["provider"] == provider}
            ax.plot(
                [i for i, s in enumerate(sizes) if s in points],
                [points[s] for s in sizes if s in points],
                marker="o",
                label=provider,
            )
        ax.set_xticks(range(len(sizes)), sizes, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("median time (ms, lower is better)")
        ax.set_yscale("log")
        ax.set_title(f"{op} — {mode}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = plot_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', op)}_{mode}_time.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def format_row(row: dict) -> str:
    """One table line: median time, GB/s and omnikern's speedups; or the check, skip or error."""
    head = f"{row['op']:<22}{row['mode']:<9}{row['size']:<34}{row['provider']:<16}"
    if "error" in row:
        return f"{head}  error: {row['error'][:90]}"
    if "skipped" in row:
        return f"{head}  skipped: {row['skipped'][:90]}"
    if "ok" in row:
        details = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row.items() if k not in ("op", "provider", "mode", "size", "ok", "wall_s"))
        return f"{head}  check {'PASS' if row['ok'] else 'FAIL'}: {details[:120]}"
    gbs = f"{row['gb_per_s']:.1f}" if "gb_per_s" in row else "-"
    tflops = f"{row['tflop_per_s']:.1f}" if "tflop_per_s" in row else "-"
    notes = [f"{k} {v:.2f}x" for k, v in row.get("speedup_vs", {}).items()]
    if "time_vs_baseline" in row:
        notes.append(f"time vs {row['baseline_size'].split()[-1]} {row['time_vs_baseline']:.2f}x")
    if "memory_vs_baseline" in row:
        notes.append(f"mem vs baseline {row['memory_vs_baseline']:.2f}x")
    mem = f"{row['peak_mem_bytes'] / 2**20:.0f}"
    return f"{head}{row['ms_median']:>11.4g}{gbs:>9}{tflops:>8}{mem:>9}  {', '.join(notes)}"


def format_table(rows: list[dict]) -> str:
    header = (f"{'op':<22}{'mode':<9}{'size':<34}{'provider':<16}{'median ms':>11}{'GB/s':>9}{'TFLOP/s':>8}"
              f"{'mem MiB':>9}  speedup of omnikern / notes")
    return "\n".join([header, "-" * len(header), *(format_row(row) for row in rows)])


__all__ = [
    "Case",
    "CaseTimeout",
    "add_ratios",
    "device_name",
    "device_slug",
    "environment",
    "format_row",
    "format_table",
    "measure_bandwidth",
    "measure_matmul_peak",
    "run_case",
    "time_limit",
    "write_json_atomic",
    "write_plots",
]
