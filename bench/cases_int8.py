"""Benchmark cases for int8 top-k search: omnikern vs torch matmul + topk, torch._int_mm + topk and
faiss (IndexFlatIP, IndexScalarQuantizer QT_8bit and QT_8bit_direct_signed), batched and one query
at a time.

Each row's ``extra`` carries ``queries_per_call`` (queries/s = queries_per_call / median seconds),
``recall_at_k`` against exact fp32 search on the same data and ``bytes_per_vector`` of the stored
corpus. Data: L2-normalised clustered vectors (cluster centres plus noise), as embeddings look,
generated on the benchmark device (10M × 256 fp32 is 10 GB: seconds of CPU work saved on a GPU run).

Rooflines: batched search is compute-bound at Q = 1,024 (2·Q·N·D = 5.2 int8 TOP at N = 10M), so
the batched rows carry ``flops`` and the measured dense-matmul peak of their arithmetic
(``peak_tflop_per_s``: ``torch._int_mm`` for int8, an fp16 matmul for fp16), next to the bytes
roofline (corpus bytes vs copy bandwidth). One check compares omnikern's top-k with the
reference's arithmetic (exact integer dots, float64 scores) at bench size on a query subset, and
with ``int8_topk_ref`` itself on a corpus slice.
"""

from __future__ import annotations

import torch
from harness import Case, measure_matmul_peak

from omnikern.ops import int8_topk, quantize_int8
from omnikern.ops.reference import int8_topk_ref, quantize_int8_ref


def _clustered(n: int, d: int, generator: torch.Generator, clusters: int = 1024) -> torch.Tensor:
    device = generator.device
    centres = torch.randn(clusters, d, generator=generator, device=device)
    out = torch.empty(n, d, device=device)
    for start in range(0, n, 1 << 20):  # bounded temporaries
        stop = min(n, start + (1 << 20))
        assign = torch.randint(0, clusters, (stop - start,), generator=generator, device=device)
        block = centres[assign] + 0.5 * torch.randn(stop - start, d, generator=generator, device=device)
        out[start:stop] = block / block.norm(dim=1, keepdim=True)
    return out


def _exact_topk(queries: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``int8_topk_ref``'s arithmetic at any size: int8 dots in float64 (exact: |dot| <= 127²·D),
    scores ``sq · scale_i · dot`` in float64, over corpus chunks (the reference's int64 matmul
    over 10M rows would take minutes on a CPU and does not run on CUDA)."""
    qc, sq = quantize_int8_ref(queries)
    qc = qc.double()
    best_s, best_i = [], []
    for start in range(0, codes.shape[0], 1 << 20):
        block = codes[start : start + (1 << 20)].double()
        scores = (qc @ block.T) * sq.double()[:, None] * scales[start : start + (1 << 20)].double()[None, :]
        s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_s.append(s)
        best_i.append(i + start)
    s, order = torch.topk(torch.cat(best_s, dim=1), k, dim=1)
    return s, torch.gather(torch.cat(best_i, dim=1), 1, order)


def _check(queries: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, k: int) -> dict:
    """omnikern vs the reference's arithmetic at bench size (a query subset, the whole corpus), and
    vs ``int8_topk_ref`` itself on a corpus slice. Indices may differ only where float32 scores tie."""
    got_s, got_i = int8_topk(queries, codes, scales, k)
    want_s, want_i = _exact_topk(queries, codes, scales, k)
    score_err = float((got_s.double() - want_s).abs().max())
    mismatched = got_i != want_i
    # A swap is fine when the two rows' exact scores are within float32 rounding of each other.
    near_tie = (got_s.double() - want_s).abs() <= 1e-6 * want_s.abs().clamp_min(1.0)
    bad_swaps = int((mismatched & ~near_tie).sum())
    rows = min(codes.shape[0], 200_000)
    few = queries[:4]
    ref_s, ref_i = int8_topk_ref(few.cpu(), codes[:rows].cpu(), scales[:rows].cpu(), k)
    slice_s, slice_i = int8_topk(few, codes[:rows], scales[:rows], k)
    slice_err = float((slice_s.cpu().double() - ref_s.double()).abs().max())
    ok = score_err <= 1e-5 and bad_swaps == 0 and slice_err <= 1e-5
    return {"ok": ok, "queries_checked": queries.shape[0], "max_score_err": score_err,
            "index_mismatches": int(mismatched.sum()), "mismatches_not_ties": bad_swaps,
            "ref_slice_rows": rows, "ref_slice_max_score_err": slice_err,
            "ref_slice_index_mismatches": int((slice_i.cpu() != ref_i).sum())}  # fmt: skip


def _chunked_topk(queries: torch.Tensor, base: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """matmul + topk over query chunks, so that the (chunk, N) score block stays bounded."""
    return torch.cat([torch.topk(q @ base.T, k, dim=1).indices for q in queries.split(chunk)])


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    found, truth = found.cpu(), truth.cpu()
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.numel()


def _faiss_indexes(base, d):
    """name -> (faiss index, query transform, bytes per vector); empty without faiss."""
    try:
        import faiss
    except ImportError:
        return {}
    faiss.omp_set_num_threads(torch.get_num_threads())
    x = base.numpy()
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    sq8 = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(x[: 1 << 16])
    sq8.add(x)
    # direct_signed stores round(v) for v in [-128, 127]: scale everything by one global factor.
    factor = 127.0 / float(base.abs().max())
    direct = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
    for start in range(0, base.shape[0], 1 << 17):
        direct.add((base[start : start + (1 << 17)] * factor).numpy())
    return {
        "faiss.IndexFlatIP": (flat, lambda q: q.numpy(), 4 * d),
        "faiss.SQ8": (sq8, lambda q: q.numpy(), d),
        "faiss.SQ8_direct_signed": (direct, lambda q: (q * factor).numpy(), d),
    }


def cases(device: str, quick: bool):
    if device == "cuda":
        n, q_batch, q_single = (1_000_000, 1024, 20) if quick else (10_000_000, 1024, 50)
    else:
        n, q_batch, q_single = (50_000, 200, 10) if quick else (1_000_000, 1000, 20)
    d, k = 256, 10
    size = f"N={n} D={d} k={k} Q={q_batch}"
    gen = torch.Generator(device=device).manual_seed(0)
    base_dev = _clustered(n, d, gen)
    queries_dev = _clustered(q_batch, d, gen)
    # Score blocks of at most 2^30 floats (4 GiB) per matmul: a GPU cannot hold 1024 × 10M.
    chunk = max(1, min(q_batch, (1 << 30) // n)) if device == "cuda" else q_batch
    truth = _chunked_topk(queries_dev, base_dev, k, chunk).cpu()
    codes, scales = quantize_int8(base_dev)  # the Triton kernel on a GPU (fewer temporaries)
    int8_peak = measure_matmul_peak(device, torch.int8)
    fp16_peak = measure_matmul_peak(device, torch.float16) if device == "cuda" else None
    batched_flops = 2 * q_batch * n * d

    def case(provider: str, mode: str, fn, found_fn, bytes_per_vector: int, queries_per_call: int, extra=None, flops=None):
        info = {"queries_per_call": queries_per_call, "bytes_per_vector": bytes_per_vector, "k": k}
        if found_fn is not None:
            info["recall_at_k"] = _recall(found_fn(), truth if mode == "batched" else truth[:queries_per_call])
        info.update(extra or {})
        return Case("int8_topk", provider, mode, size, fn, bytes_moved=n * bytes_per_vector, flops=flops, extra=info)

    # ---- batched ----
    yield case(
        "omnikern", "batched",
        lambda: int8_topk(queries_dev, codes, scales, k),
        lambda: int8_topk(queries_dev, codes, scales, k)[1], d + 4, q_batch,
        {"impl": "triton" if device == "cuda" else "cpp", "peak_tflop_per_s": int8_peak, "peak_source": "torch._int_mm"},
        flops=batched_flops,
    )  # fmt: skip
    # All queries on CUDA (the batched call already compiled for this Q); a subset on a CPU.
    checked = queries_dev if device == "cuda" else queries_dev[: min(q_batch, 64)]
    yield Case("int8_topk", "omnikern", "check", size, lambda: _check(checked, codes, scales, k), check=True)
    if device == "cuda":
        base_half, queries_half = base_dev.half(), queries_dev.half()
        yield case(
            "torch.fp16", "batched",
            lambda: _chunked_topk(queries_half, base_half, k, chunk),
            lambda: _chunked_topk(queries_half, base_half, k, chunk), 2 * d, q_batch,
            {"query_chunk": chunk, "peak_tflop_per_s": fp16_peak, "peak_source": "fp16 matmul"}, flops=batched_flops,
        )  # fmt: skip
    yield case(
        "torch", "batched",
        lambda: _chunked_topk(queries_dev, base_dev, k, chunk),
        lambda: _chunked_topk(queries_dev, base_dev, k, chunk), 4 * d, q_batch,
        {"dtype": "float32", "query_chunk": chunk}, flops=batched_flops,
    )  # fmt: skip
    # torch._int_mm + topk writes the whole int32 (Q, rows) block: it runs on a slice of the corpus
    # (1/16 on CPU where it is slow, 1/10 on a GPU where 1024 × 10M int32 would not fit).
    qcodes, qscales = quantize_int8(queries_dev, impl="torch")
    rows = max(k, n // 10) if device == "cuda" else max(k, n // 16)

    codes_t = codes[:rows].T  # (D, rows), column-major as CUDA's _int_mm wants

    def int_mm_topk(rows=rows):
        dots = torch._int_mm(qcodes, codes_t)
        return torch.topk(dots.float() * qscales[:, None] * scales[None, :rows], k, dim=1)

    yield Case(
        "int8_topk", "torch._int_mm", "batched", size, int_mm_topk, bytes_moved=rows * (d + 4),
        flops=2 * q_batch * rows * d,
        extra={"queries_per_call": q_batch, "bytes_per_vector": d + 4, "k": k, "corpus_rows_timed": rows,
               "peak_tflop_per_s": int8_peak, "peak_source": "torch._int_mm",
               "note": f"timed on the first {rows} rows only; scale time by {n / rows:g} for the full corpus"},
    )  # fmt: skip

    # ---- one query at a time ----
    singles = queries_dev[:q_single]

    def one_at_a_time_omnikern():
        return torch.cat([int8_topk(singles[i : i + 1], codes, scales, k)[1] for i in range(q_single)])

    yield case("omnikern", "one-query", one_at_a_time_omnikern, one_at_a_time_omnikern, d + 4, q_single)

    def one_at_a_time_torch():
        return torch.cat([torch.topk(singles[i : i + 1] @ base_dev.T, k, dim=1).indices for i in range(q_single)])

    yield case("torch", "one-query", one_at_a_time_torch, one_at_a_time_torch, 4 * d, q_single)

    # ---- faiss (CPU) ----
    if device == "cpu":
        indexes = _faiss_indexes(base_dev, d)
        if not indexes:
            yield Case("int8_topk", "faiss", "batched", size, lambda: None, skipped="faiss is not installed")
        for name, (index, transform, bpv) in indexes.items():
            xq = transform(queries_dev)
            xs = transform(queries_dev[:q_single])

            def batched(index=index, xq=xq):
                return index.search(xq, k)

            def single(index=index, xs=xs):
                return [index.search(xs[i : i + 1], k) for i in range(q_single)]

            yield case(name, "batched", batched, lambda index=index, xq=xq: torch.from_numpy(index.search(xq, k)[1]), bpv, q_batch)
            yield case(name, "one-query", single, None, bpv, q_single)
