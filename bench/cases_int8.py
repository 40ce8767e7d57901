"""Benchmark cases for int8 top-k search: omnikern vs torch matmul + topk, torch._int_mm + topk and
faiss (IndexFlatIP, IndexScalarQuantizer QT_8bit and QT_8bit_direct_signed), batched and one query
at a time.

Each row's ``extra`` carries ``queries_per_call`` (queries/s = queries_per_call / median seconds),
``recall_at_k`` against exact fp32 search on the same data and ``bytes_per_vector`` of the stored
corpus. Data: L2-normalised clustered vectors (cluster centres plus noise), as embeddings look.
"""

from __future__ import annotations

import torch
from harness import Case

from omnikern.ops import int8_topk, quantize_int8


def _clustered(n: int, d: int, generator: torch.Generator, clusters: int = 1024) -> torch.Tensor:
    centres = torch.randn(clusters, d, generator=generator)
    out = torch.empty(n, d)
    for start in range(0, n, 1 << 17):  # bounded temporaries at 1M rows
        stop = min(n, start + (1 << 17))
        assign = torch.randint(0, clusters, (stop - start,), generator=generator)
        block = centres[assign] + 0.5 * torch.randn(stop - start, d, generator=generator)
        out[start:stop] = block / block.norm(dim=1, keepdim=True)
    return out


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


def cases(device: str, quick: bool) -> list[Case]:
    if device == "cuda":
        n, q_batch, q_single = (1_000_000, 1024, 20) if quick else (10_000_000, 1024, 50)
    else:
        n, q_batch, q_single = (50_000, 200, 10) if quick else (1_000_000, 1000, 20)
    d, k = 256, 10
    gen = torch.Generator().manual_seed(0)
    base = _clustered(n, d, gen)
    queries = _clustered(q_batch, d, gen)
    base_dev, queries_dev = base.to(device), queries.to(device)
    # Score blocks of at most 2^30 floats (4 GiB) per matmul: a GPU cannot hold 1024 × 10M.
    chunk = max(1, min(q_batch, (1 << 30) // n)) if device == "cuda" else q_batch
    truth = _chunked_topk(queries_dev, base_dev, k, chunk).cpu()
    codes, scales = quantize_int8(base_dev)  # the Triton kernel on a GPU (fewer temporaries)

    out: list[Case] = []

    def add(provider: str, mode: str, fn, found_fn, bytes_per_vector: int, queries_per_call: int, extra=None):
        info = {"queries_per_call": queries_per_call, "bytes_per_vector": bytes_per_vector, "k": k}
        if found_fn is not None:
            info["recall_at_k"] = _recall(found_fn(), truth if mode == "batched" else truth[:queries_per_call])
        info.update(extra or {})
        size = f"N={n} D={d} k={k}"
        out.append(Case("int8_topk", provider, mode, size, fn, bytes_moved=n * bytes_per_vector, extra=info))

    # ---- batched ----
    add(
        "omnikern", "batched",
        lambda: int8_topk(queries_dev, codes, scales, k),
        lambda: int8_topk(queries_dev, codes, scales, k)[1], d + 4, q_batch,
        {"impl": "triton" if device == "cuda" else "cpp"},
    )
    add(
        "torch", "batched",
        lambda: _chunked_topk(queries_dev, base_dev, k, chunk),
        lambda: _chunked_topk(queries_dev, base_dev, k, chunk), 4 * d, q_batch,
        {"dtype": "float32", "query_chunk": chunk},
    )
    if device == "cuda":
        base_half, queries_half = base_dev.half(), queries_dev.half()
        add(
            "torch.fp16", "batched",
            lambda: _chunked_topk(queries_half, base_half, k, chunk),
            lambda: _chunked_topk(queries_half, base_half, k, chunk), 2 * d, q_batch, {"query_chunk": chunk},
        )
    # torch._int_mm + topk writes the whole int32 (Q, rows) block: it runs on a slice of the corpus
    # (1/16 on CPU where it is slow, 1/10 on a GPU where 1024 × 10M int32 would not fit).
    qcodes, qscales = quantize_int8(queries_dev, impl="torch")
    rows = max(k, n // 10) if device == "cuda" else max(k, n // 16)

    codes_t = codes[:rows].T  # (D, rows), column-major as CUDA's _int_mm wants

    def int_mm_topk(rows=rows):
        dots = torch._int_mm(qcodes, codes_t)
        return torch.topk(dots.float() * qscales[:, None] * scales[None, :rows], k, dim=1)

    out.append(Case(
        "int8_topk", "torch._int_mm", "batched", f"N={n} D={d} k={k}", int_mm_topk, bytes_moved=rows * (d + 4),
        extra={"queries_per_call": q_batch, "bytes_per_vector": d + 4, "k": k, "corpus_rows_timed": rows,
               "note": f"timed on the first {rows} rows only; scale time by {n / rows:g} for the full corpus"},
    ))

    # ---- one query at a time ----
    singles = queries_dev[:q_single]

    def one_at_a_time_omnikern():
        return torch.cat([int8_topk(singles[i : i + 1], codes, scales, k)[1] for i in range(q_single)])

    add("omnikern", "one-query", one_at_a_time_omnikern, one_at_a_time_omnikern, d + 4, q_single)

    def one_at_a_time_torch():
        return torch.cat([torch.topk(singles[i : i + 1] @ base_dev.T, k, dim=1).indices for i in range(q_single)])

    add("torch", "one-query", one_at_a_time_torch, one_at_a_time_torch, 4 * d, q_single)

    # ---- faiss (CPU) ----
    if device == "cpu":
        for name, (index, transform, bpv) in _faiss_indexes(base, d).items():
            xq = transform(queries)
            xs = transform(queries[:q_single])

            def batched(index=index, xq=xq):
                return index.search(xq, k)

            def single(index=index, xs=xs):
                return [index.search(xs[i : i + 1], k) for i in range(q_single)]

            add(name, "batched", batched, lambda index=index, xq=xq: torch.from_numpy(index.search(xq, k)[1]), bpv, q_batch)
            add(name, "one-query", single, None, bpv, q_single)
    return out
