#!/usr/bin/env python3
"""Compiles every omnikern Triton kernel variant for an H100/H200 (sm_90) without a GPU, and checks it fits.

Why: CI has no GPU, and the Triton interpreter the tests use never compiles a kernel. It accepts
tiles that need more shared memory than an sm_90 block has, and it reports nothing about registers
or spills. Triton's wheel ships ptxas, so a CPU machine can compile for sm_90 when the active driver
reports that target and kernels are compiled instead of launched.

The check runs in two phases:

1. Collect: one process, a few seconds. A compile-only driver that reports sm_90 is made active.
   ``knobs.runtime.jit_cache_hook`` then records each kernel launch's specialisation, the JSON
   that Triton itself serialises for ``JITFunction.preload``, and tells Triton to skip the
   launch. The variants in ``sm90_variants.py`` call omnikern's public functions on small CPU
   tensors. So each kernel gets what its real wrapper gives it on a GPU: the dtypes, the
   integer specialisations (multiples of 16, == 1), the constexprs and num_warps.
   ``TRITON_INTERPRET`` is unset, so the interpreter's own block sizes are not used.
2. Compile: ``--jobs`` processes. Each unique specialisation is compiled with ``preload`` into
   the Triton cache given by ``--cache-dir`` (reruns are cache hits). ptxas's ``-v`` report gives
   the registers and the spills. A kernel fails when it does not compile, when its shared memory
   is above sm_90's 232,448 bytes per block, or when its registers leave too few threads for its
   num_warps. These are the checks ``CompiledKernel._init_handles`` makes on a real GPU.

Run it with the GPU machine's triton (3.6.0; ``tools/sm90-requirements.txt``). ``.ci/run`` runs
``--quick``, ``--full`` adds the rest of the grid, and ``--out FILE.md|FILE.json`` writes the
table. Failures listed in ``tools/sm90_known_failures.txt`` are reported as XFAIL. The list is
strict: a listed kernel that now fits fails the check, so the line gets removed.

    python tools/sm90_compile_check.py --quick
    python tools/sm90_compile_check.py --full --out docs/sm90-compile-check.md --section after
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent

# The triton the GPU machine runs. Another version compiles other code, so its numbers are not
# the GPU's.
EXPECTED_TRITON = "3.6.0"
# sm_90 (H100, H200). Shared memory per block with the opt-in that Triton's launcher makes
# (cudaFuncAttributeMaxDynamicSharedMemorySize): 227 KiB. 64 Ki 32-bit registers per SM and at
# most 1,024 threads per block. The number of SMs (132 on an H100 SXM or an H200) only changes
# grids, not what is compiled.
SM90_CAPABILITY = 90
SM90_MAX_SHARED = 232_448
SM90_REGISTERS = 65_536
SM90_MAX_THREADS = 1024
SM90_SMS = 132
DEFAULT_CACHE = ROOT / "build" / "sm90-compile-cache"
KNOWN_FAILURES = TOOLS / "sm90_known_failures.txt"


# ----------------------------------------------------------------------------------------------
# The compile-only sm_90 driver
# ----------------------------------------------------------------------------------------------


def _install_compile_only_driver() -> None:
    """Makes Triton compile for sm_90 as if an H100 were the active device.

    Checked against triton 3.6.0. Triton picks the target, device and stream through
    ``triton.runtime.driver.active``. ``driver.set_active`` is the public way to replace it, and
    ``DriverBase`` is the backend plugin interface. A launch or a binary load would need a real
    device, so this driver refuses both: the check only ever compiles.
    """
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    class _NoLaunch:
        def __init__(self, src, metadata):
            raise RuntimeError("the sm_90 compile-only driver cannot launch kernels")

    class CompileOnlySm90Driver(DriverBase):
        launcher_cls = _NoLaunch

        @classmethod
        def is_active(cls):
            return False  # never picked on its own; only set_active installs it

        def map_python_to_cpp_type(self, ty: str) -> str:
            from triton.backends.nvidia.driver import ty_to_cpp

            return ty_to_cpp(ty)

        def get_current_target(self):
            return GPUTarget("cuda", SM90_CAPABILITY, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("the sm_90 compile-only driver cannot benchmark")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    driver.set_active(CompileOnlySm90Driver())


def _let_cpu_tensors_take_the_gpu_path() -> None:
    """Sends CPU tensors down the GPU code path of omnikern's wrappers (collect phase only).

    ``_triton.kernel_supported`` is the single place that decides "Triton kernel or torch
    path". int8's split count asks torch for the SM count, which only sizes the grid. Anything else
    in the wrappers already works on CPU tensors, because the interpreter tests run them that way.
    """
    import torch

    from omnikern.ops import _triton

    _triton.kernel_supported = lambda *tensors: bool(tensors)

    class _Sm90Properties:
        name = "sm_90 compile-only"
        major, minor = divmod(SM90_CAPABILITY, 10)
        multi_processor_count = SM90_SMS

    torch.cuda.get_device_properties = lambda device=None: _Sm90Properties()


# ----------------------------------------------------------------------------------------------
# Phase 1: collect the specialisations the variants launch
# ----------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One kernel as it would be compiled: its specialisation and the variants that launch it."""

    module: str
    name: str
    data: str  # Triton's specialisation JSON (the argument of JITFunction.preload)
    num_warps: int
    constexprs: dict[str, object]
    dtypes: list[str]
    ints: str  # integer specialisation, e.g. "B=1 16∤D" ("" = every int a multiple of 16)
    variants: list[str] = field(default_factory=list)


def _describe(jit_fn, data: dict) -> tuple[dict, list[str], str]:
    """(declared constexprs, pointer dtypes in order, integer specialisation) of one launch."""
    values = {tuple(k): v for k, v in zip(data["constant_keys"], data["constant_vals"])}
    attrs = {tuple(k): v for k, v in zip(data["attrs_keys"], data["attrs_vals"])}
    constexprs, dtypes, ints = {}, [], []
    for param in jit_fn.params:
        ty = data["signature"][param.name]
        if param.is_constexpr:
            value = values[(param.num,)]
            constexprs[param.name] = value["constexpr"] if isinstance(value, dict) else value
        elif ty.startswith("*"):
            if ty[1:] not in dtypes:
                dtypes.append(ty[1:])
        elif ty == "constexpr":  # an int specialised on its value (== 1)
            ints.append(f"{param.name}={values[(param.num,)]}")
        elif ty.startswith(("i", "u")) and not any(a[0] == "tt.divisibility" for a in attrs.get((param.num,), [])):
            ints.append(f"16∤{param.name}")
    return constexprs, dtypes, " ".join(ints)


def collect(variants) -> list[Spec]:
    """Runs every variant through the real wrappers with launches intercepted; returns the unique
    specialisations in first-launch order, each with the labels of the variants that reach it."""
    from triton import knobs

    specs: dict[tuple[str, str], Spec] = {}
    current = [""]

    def record(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        data = json.loads(compile["specialization_data"])
        ident = (data["name"], data["key"])
        if ident not in specs:
            constexprs, dtypes, ints = _describe(fn.jit_function, data)
            specs[ident] = Spec(fn.module, fn.name, compile["specialization_data"], compile["num_warps"], constexprs, dtypes, ints)
        if current[0] not in specs[ident].variants:
            specs[ident].variants.append(current[0])
        return True  # skip: compiled later, in parallel; nothing is launched

    knobs.runtime.jit_cache_hook = record
    try:
        for variant in variants:
            current[0] = variant.label
            try:
                variant.run()
            except Exception as exc:  # a wrapper bug is a failure of the check, reported per variant
                raise RuntimeError(f"variant {variant.label!r} failed before any kernel compiled: {exc!r}") from exc
    finally:
        knobs.runtime.jit_cache_hook = None
    return list(specs.values())


# ----------------------------------------------------------------------------------------------
# Phase 2: compile one specialisation (worker processes)
# ----------------------------------------------------------------------------------------------

_PTXAS_PROPERTIES = re.compile(
    r"Function properties for (?P<name>\S+)\s*\n\s*(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
    r"(?P<loads>\d+) bytes spill loads\s*\n.*?Used (?P<regs>\d+) registers"
)


def _parse_ptxas(log: str, name: str) -> dict | None:
    for m in _PTXAS_PROPERTIES.finditer(log):
        if m.group("name") == name:
            return {
                "regs": int(m.group("regs")),
                "spill_stores": int(m.group("stores")),
                "spill_loads": int(m.group("loads")),
                "stack": int(m.group("stack")),
            }
    return None


def _rerun_ptxas(kernel) -> str:
    """ptxas -v on the kernel's PTX, for a Triton cache hit whose report this check never saw."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp, "k.ptx")
        ptx.write_text(kernel.asm["ptx"])
        # sm_90a: the arch Triton's make_cubin passes for capability 90.
        done = subprocess.run(
            [knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(Path(tmp, "k.cubin"))],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return done.stderr


def _worker_init(cache_dir: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    from triton import knobs

    _install_compile_only_driver()
    # Triton runs ptxas with -v and throws the report away unless asked to print it.
    knobs.nvidia.dump_ptxas_log = True


def _max_threads(regs: int) -> int:
    """Threads per block that sm_90 can give a kernel using ``regs`` registers per thread
    (registers are allocated per warp, in units of 256 = 8 per thread)."""
    per_warp = ((max(regs, 1) + 7) // 8) * 8 * 32
    return min(SM90_MAX_THREADS, (SM90_REGISTERS // per_warp) * 32)


def compile_spec(args: tuple[int, Spec, str]) -> dict:
    """Compiles one specialisation for sm_90. Returns its row: stats and a status."""
    index, spec, cache_dir = args
    fn = getattr(importlib.import_module(spec.module), spec.name)
    log = io.StringIO()
    start = time.perf_counter()
    row = {"index": index, "kernel": spec.name, "num_warps": spec.num_warps, "error": None}
    try:
        # Triton prints the ptxas report (and, on a ptxas failure, the whole PTX) on stdout.
        with contextlib.redirect_stdout(log):
            kernel = fn.preload(spec.data)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["shared"] = kernel.metadata.shared
    sidecar = Path(cache_dir, "omnikern-ptxas", f"{kernel.hash}.json")
    stats = _parse_ptxas(log.getvalue(), kernel.name)
    row["cached"] = stats is None
    if stats is None and sidecar.exists():  # a cache hit: ptxas did not run this time
        stats = json.loads(sidecar.read_text())
    if stats is None:
        stats = _parse_ptxas(_rerun_ptxas(kernel), kernel.name)
    if stats is None:
        row["error"] = "ptxas -v gave no register report"
        return row
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    tmp = sidecar.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(stats))
    tmp.replace(sidecar)
    row.update(stats)
    return row


# ----------------------------------------------------------------------------------------------
# Verdicts, known failures, report
# ----------------------------------------------------------------------------------------------


def _problems(row: dict) -> list[str]:
    if row["error"]:
        return [f"compile error: {row['error']}"]
    problems = []
    if row["shared"] > SM90_MAX_SHARED:
        problems.append(f"shared memory {row['shared']:,} B > {SM90_MAX_SHARED:,} B")
    threads = row["num_warps"] * 32
    if threads > _max_threads(row["regs"]):
        problems.append(f"{row['regs']} registers allow {_max_threads(row['regs'])} threads < {threads}")
    return problems


def _load_known_failures(path: Path) -> list[tuple[str, dict[str, str], str]]:
    """Lines ``kernel NAME=value ...  # why``: a failing kernel matching one is XFAIL."""
    known = []
    if not path.exists():
        return known
    for line in path.read_text().splitlines():
        text, _, why = line.partition("#")
        words = text.split()
        if words:
            known.append((words[0], dict(w.split("=", 1) for w in words[1:]), why.strip()))
    return known


def _matches(entry, spec: Spec) -> bool:
    kernel, wanted, _ = entry
    return spec.name == kernel and all(str(spec.constexprs.get(k)) == v for k, v in wanted.items())


def judge(specs: list[Spec], rows: list[dict], known, check_stale: bool = True) -> list[str]:
    """Sets each row's status (ok, FAIL, XFAIL, XPASS); returns the messages that fail the check.
    ``check_stale``: a known failure that matches no kernel is an error (not with ``--only``)."""
    failures = []
    for spec, row in zip(specs, rows):
        listed = [e for e in known if _matches(e, spec)]
        if row.get("skipped"):
            row["status"], row["problems"] = "XFAIL", ["known failure, not compiled (--full compiles it)"]
            continue
        problems = _problems(row)
        if problems and listed:
            row["status"] = "XFAIL"
        elif problems:
            row["status"] = "FAIL"
            failures.append(f"{_title(spec)}: {'; '.join(problems)} (reached by {spec.variants[0]})")
        elif listed:
            row["status"] = "XPASS"
            failures.append(f"{_title(spec)} fits now: remove its line from {KNOWN_FAILURES.name}")
        else:
            row["status"] = "ok"
        row["problems"] = problems
    for entry in known if check_stale else []:
        if not any(_matches(entry, spec) for spec in specs):
            failures.append(f"{KNOWN_FAILURES.name}: {entry[0]} {entry[1]} matches no kernel any more: remove the line")
    return failures


def _title(spec: Spec) -> str:
    return f"{spec.name}[{_constexpr_text(spec)}]"


def _constexpr_text(spec: Spec) -> str:
    def short(v):
        return {True: "1", False: "0"}.get(v, v) if isinstance(v, bool) else v

    return " ".join(f"{k}={short(v)}" for k, v in spec.constexprs.items())


_COLUMNS = ["kernel", "constexprs", "dtypes", "ints", "warps", "regs", "spill st/ld B", "stack B", "shared B", "status", "reached by"]


def _cells(spec: Spec, row: dict) -> list[str]:
    def num(key):
        return f"{row[key]:,}" if key in row else "-"

    spill = f"{row['spill_stores']:,}/{row['spill_loads']:,}" if "spill_stores" in row else "-"
    more = f" (+{len(spec.variants) - 1})" if len(spec.variants) > 1 else ""
    status = row["status"] if not row["problems"] else f"{row['status']}: {'; '.join(row['problems'])}"
    return [
        spec.name, _constexpr_text(spec), " ".join(spec.dtypes), spec.ints or "all ÷16", str(spec.num_warps),
        num("regs"), spill, num("stack"), num("shared"), status, spec.variants[0] + more,
    ]  # fmt: skip


def markdown_table(specs: list[Spec], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for spec, row in zip(specs, rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(spec, row)) + " |")
    return "\n".join(lines)


def summary(specs: list[Spec], rows: list[dict]) -> str:
    ok = [r for r in rows if not r["error"] and not r.get("skipped")]
    spilling = [r for r in ok if r["spill_stores"] > 0]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "FAIL", "XFAIL", "XPASS")}
    parts = [f"{len(rows)} kernels", ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    parts.append(f"{len(spilling)} spill registers to local memory")
    if ok:
        parts.append(f"max shared {max(r['shared'] for r in ok):,} B (limit {SM90_MAX_SHARED:,})")
    return "; ".join(parts)


def write_markdown(path: Path, section: str, text: str) -> None:
    """Replaces (or appends) the block between ``<!-- sm90:SECTION -->`` markers of ``path``."""
    start, end = f"<!-- sm90:{section} -->", f"<!-- /sm90:{section} -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def _kernels_commit() -> str:
    """The last commit that changed omnikern/ops (the kernels compiled), "+ local changes" if dirty."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h", "--", "omnikern/ops")
        return commit + (" + local changes" if git("status", "--porcelain", "--", "omnikern/ops") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the CI set (default)")
    size.add_argument("--full", action="store_true", help="every variant of sm90_variants.py")
    parser.add_argument("--only", default="", help="only variants whose label contains this text")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"Triton cache (default {DEFAULT_CACHE.relative_to(ROOT)})")
    parser.add_argument("--out", type=Path, help="write the table: .json (rows) or .md (a section, see --section)")
    parser.add_argument("--section", default="before", help="the Markdown section --out replaces (default before)")
    parser.add_argument("--known-failures", type=Path, default=KNOWN_FAILURES)
    parser.add_argument("--compile-known", action="store_true", help="compile the known failures in --quick too")
    parser.add_argument("--list", action="store_true", help="collect and list the kernels, compile nothing")
    args = parser.parse_args(argv)

    # The interpreter would replace compilation; it must be off before triton is imported.
    os.environ.pop("TRITON_INTERPRET", None)
    args.cache_dir = args.cache_dir.resolve()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(args.cache_dir)
    sys.path[:0] = [str(ROOT), str(TOOLS)]
    import torch
    import triton

    if triton.__version__ != EXPECTED_TRITON:
        print(f"sm90 compile check: needs triton {EXPECTED_TRITON} (the GPU machine's), got {triton.__version__}; "
              f"pip install -r tools/sm90-requirements.txt", file=sys.stderr)  # fmt: skip
        return 2

    import sm90_variants

    torch.set_num_threads(1)
    _install_compile_only_driver()
    _let_cpu_tensors_take_the_gpu_path()
    mode = "full" if args.full else "quick"
    variants = [v for v in sm90_variants.variants(mode) if args.only in v.label]
    t0 = time.perf_counter()
    specs = collect(variants)
    collect_s = time.perf_counter() - t0
    print(f"== sm_90 compile check ({mode}): {len(variants)} variants -> {len(specs)} kernels "
          f"(collected in {collect_s:.1f} s), triton {triton.__version__}, cache {args.cache_dir}", flush=True)  # fmt: skip
    if args.list:
        for spec in specs:
            print(f"{_title(spec)} {' '.join(spec.dtypes)} {spec.ints} warps={spec.num_warps} <- {spec.variants[0]}")
        return 0

    # The slowest compiles first (the loss backward, the bitonic top-k; fp32 IEEE dots spill most),
    # so that the workers finish together.
    def cost(item):
        spec, c = item[1], item[1].constexprs
        heavy = spec.name == "_lse_bwd_kernel" or (spec.name == "_int8_topk_kernel" and not c["EXTRACT"])
        return -(heavy * 4 + bool(c.get("IEEE")) * 2 + c.get("NUM_P", 0) / 8 + c.get("K_PAD", 0) / 1024)

    # Known failures take minutes each to compile (the int8 top-k tiles that overflow shared memory):
    # --quick trusts the list and skips them; --full (or --compile-known) compiles them to prove
    # they still fail.
    known = _load_known_failures(args.known_failures)
    rows: list[dict | None] = [None] * len(specs)
    for i, spec in enumerate(specs):
        if not (args.full or args.compile_known) and any(_matches(e, spec) for e in known):
            rows[i] = {"index": i, "kernel": spec.name, "num_warps": spec.num_warps, "error": None, "skipped": True, "seconds": 0.0}
    todo = [(i, spec, str(args.cache_dir)) for i, spec in enumerate(specs) if rows[i] is None]
    work = sorted(todo, key=cost)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/triton state
    with ctx.Pool(args.jobs, initializer=_worker_init, initargs=(str(args.cache_dir),)) as pool:
        for done, row in enumerate(pool.imap_unordered(compile_spec, work, chunksize=1), 1):
            rows[row["index"]] = row
            spec = specs[row["index"]]
            stats = row["error"] or f"regs {row.get('regs')}, spills {row.get('spill_stores')} B, shared {row.get('shared'):,} B"
            print(f"[{done}/{len(work)}] {row['seconds']:6.1f} s  {_title(spec)} {' '.join(spec.dtypes[:1])} {spec.ints}: {stats}", flush=True)

    failures = judge(specs, rows, known, check_stale=not args.only)
    total_s = time.perf_counter() - t0
    print()
    print(markdown_table(specs, rows))
    print()
    print(f"{summary(specs, rows)}; {total_s:.0f} s")
    if args.out:
        meta = {
            "mode": mode, "triton": triton.__version__, "torch": torch.__version__, "kernels": _kernels_commit(),
            "target": f"cuda sm_{SM90_CAPABILITY}", "max_shared": SM90_MAX_SHARED, "seconds": round(total_s, 1),
        }  # fmt: skip
        if args.out.suffix == ".json":
            out = [dict(asdict(s), **r) for s, r in zip(specs, rows)]
            for item in out:
                item.pop("data")
            args.out.write_text(json.dumps({"meta": meta, "kernels": out}, indent=1) + "\n")
        else:
            head = (f"omnikern/ops at `{meta['kernels']}`, `--{mode}`, triton {meta['triton']}, torch {meta['torch']}, "
                    f"{len(variants)} variants, {meta['seconds']:.0f} s.\n\n{summary(specs, rows)}.\n\n")  # fmt: skip
            write_markdown(args.out, args.section, head + markdown_table(specs, rows))
    for message in failures:
        print(f"FAIL {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
