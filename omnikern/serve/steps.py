"""The three serving steps (tokenize, encode, score), each written once, with no Triton import.

Every generated ``model.py`` is a thin shell around these classes: ``tokenizer``,
``query_encoder`` and ``scorer`` each wrap one step; the fused ``omnisearch`` model
(``export_triton(pipeline="fused")``) runs all three in turn inside one python-backend stub, which
saves the two hand-overs between stub processes that the ensemble pays per request.

A step is built from its model's version directory and its config.pbtxt ``parameters``; it has

- ``check(*inputs)``: one request's numpy inputs → what the step needs, or :class:`RequestError`;
- ``run(items)``: the checked items of every good request of a dynamic batch → one result per
  item, in order: a tuple of output arrays (one per output tensor, rows of that request only), or
  a :class:`RequestError` for a request that fails only once the batch has run.

:func:`omnikern.serve.backend.answer` turns that into one Triton response per request. All three
steps run their whole batch in one call (one tokenizer call, one encoder call, one index search).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

import numpy as np

from omnikern.serve import contract as C
from omnikern.serve.backend import instance_device
from omnikern.serve.contract import RequestError

__all__ = ["Encode", "Score", "Search", "Tokenize"]


class Tokenize:
    """``text`` BYTES (B, 1) → ``input_ids``, ``attention_mask`` INT64 (B, pad_to).

    WordPiece in omnikern's C++ extension, once over every row of every request in the batch.
    Every result is padded to ``pad_to`` columns (the tokenizer's max length): Triton's dynamic
    batcher only merges requests whose tensors have equal shapes, so per-request widths would leave
    the encoder running one request at a time (measured: 1.5 rows per execute at concurrency 16).
    The encoder trims each batch back to its longest row.

    Parameters: ``pad_to`` (required), ``max_text_bytes``, ``threads`` (0 = all cores). Files:
    ``wordpiece.json`` in ``directory``.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str]):
        from omnikern.text.wordpiece import WordPieceTokenizer

        self.max_bytes = int(params.get("max_text_bytes", C.MAX_TEXT_BYTES))
        self.threads = int(params.get("threads", "1"))
        self.pad_to = int(params["pad_to"])
        self.tokenizer = WordPieceTokenizer.load(os.path.join(directory, C.WORDPIECE_FILE))
        self.pad_id = self.tokenizer.pad_id

    def check(self, text: np.ndarray | None) -> list[bytes]:
        """The request's rows as UTF-8 bytes (:func:`contract.check_texts`)."""
        return C.check_texts(text, self.max_bytes)

    def run(self, items: Sequence[list[bytes]]) -> list[tuple[np.ndarray, np.ndarray] | RequestError]:
        """Per request: ``(input_ids, attention_mask)`` (rows, pad_to), or an error when one of its
        rows has more than ``pad_to`` tokens."""
        counts = [len(rows) for rows in items]
        encoded = self.tokenizer.encode_batch([row for rows in items for row in rows], num_threads=self.threads)
        results: list[tuple[np.ndarray, np.ndarray] | RequestError] = []
        for ids, mask in zip(C.split_rows(encoded["input_ids"], counts), C.split_rows(encoded["attention_mask"], counts)):
            ids, mask = C.trim_tokens(ids, mask)  # the batch's longest row may be another request's
            if ids.shape[1] > self.pad_to:
                results.append(RequestError(f"{C.TEXT} has a row of {ids.shape[1]} tokens, the limit is {self.pad_to}"))
            else:
                results.append(C.pad_tokens([(ids, mask)], self.pad_id, width=self.pad_to))
        return results


class Encode:
    """``input_ids``, ``attention_mask`` INT64 (B, T) → ``embedding`` FP32 (B, D).

    Two runtimes (parameter ``encoder_runtime``): ``torch`` rebuilds the QueryTower from
    ``query_tower.json`` + ``query_tower.safetensors`` (no pickle) on the instance's device;
    ``onnx`` runs ``query_tower.onnx`` in a sequential onnxruntime CPU session with
    ``torch_threads`` intra-op threads. The batch's token rows are padded to one width, trimmed to
    the longest real row, encoded together and split back. One small batch is encoded at
    construction, so that one-time setup (memory arenas, kernel selection) is not paid by the
    first request.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str], args: dict):
        # Imported here: the tokenizer's stub, which shares this module, needs no torch.
        from omnikern.models.checkpoint import load_query_tower, read_query_tower_config

        self.runtime = params.get("encoder_runtime", "torch")
        meta = read_query_tower_config(directory)
        if self.runtime == "onnx":
            from omnikern.serve.onnx_encoder import encoder_session

            self.session = encoder_session(os.path.join(directory, C.ENCODER_ONNX_FILE),
                                           threads=int(params.get("torch_threads", "0")))
        else:
            self.device = instance_device(args, params)
            self.tower = load_query_tower(directory, device=self.device)
        self.pad_id = int(meta["pad_id"])
        self.vocab_size = int(meta["vocab_size"])
        self.max_tokens = int(meta["max_tokens"])
        tokens = np.ones((2, min(8, self.max_tokens)), dtype=np.int64)
        self.encode(tokens, tokens)

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids and mask → (B, D) float32 embeddings."""
        if self.runtime == "onnx":
            return self.session.run([C.EMBEDDING], {C.INPUT_IDS: ids, C.ATTENTION_MASK: mask})[0]
        import torch

        with torch.inference_mode():
            embedding = self.tower(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        return embedding.float().cpu().numpy()

    def check(self, input_ids: np.ndarray | None, attention_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The request's ``(input_ids, attention_mask)`` (:func:`contract.check_tokens`)."""
        return C.check_tokens(input_ids, attention_mask, self.vocab_size, self.max_tokens)

    def run(self, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray]]:
        """Per request: ``(embedding,)`` (rows, D) float32."""
        ids, mask = C.trim_tokens(*C.pad_tokens(items, self.pad_id))
        embedding = np.ascontiguousarray(self.encode(np.ascontiguousarray(ids), np.ascontiguousarray(mask)))
        return [(part,) for part in C.split_rows(embedding, [part_ids.shape[0] for part_ids, _ in items])]


def warm_score_kernels(device, dim: int, k_default: int, max_k: int, rerank: int) -> list[str]:
    """Compiles the int8 top-k kernels a GPU scorer's requests will use, before the first request.

    The one-row search in :class:`Score` compiles only the (1 query, k = 1) variant, which requests
    rarely hit: each padded k (the next power of two) and each query block (16, 32 or 64 queries)
    is its own compile, seconds to tens of seconds each on sm_90. This warms the default k and the
    largest k (each as the index searches it: at least ``rerank`` with a re-rank) for every query
    block; other k compile on first use. CPU scorers use the C++ kernel: nothing to compile.
    Returns :func:`omnikern.ops.warmup`'s labels (empty on CPU).
    """
    if device.type != "cuda":
        return []
    from omnikern.ops import warmup

    shortlists = sorted({max(k, rerank) if rerank else k for k in (k_default, max_k)})
    return warmup(device, dim=dim, topk_k=shortlists, topk_queries=64)


class Score:
    """``embedding`` FP32 (B, D) [+ optional ``k`` INT32 (B, 1)] → ``scores`` FP32, ``ids`` INT64 (B, k).

    The int8 index (``index.safetensors``, loaded with ``index_class``, default
    ``omnikern:Int8Index``) is searched once per batch with the largest k asked for (fused int8
    scoring + top-k); every request then gets its own rows and its own k. Parameters:
    ``k_default`` (required), ``max_k``, ``rerank``, ``index_class``, ``torch_threads``.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str], args: dict):
        import torch

        self.device = instance_device(args, params)
        self.k_default = int(params["k_default"])
        self.max_k = int(params.get("max_k", C.MAX_K))
        self.rerank = int(params.get("rerank", "0"))
        module, _, name = params.get("index_class", "omnikern:Int8Index").partition(":")
        index_class = getattr(importlib.import_module(module), name)
        self.index = index_class.load(os.path.join(directory, C.INDEX_FILE), device=self.device)
        self.dim = int(self.index.dim)
        # The first search pays a one-time setup (~0.75 s on the 2-core CPU, measured in the
        # server); pay it here rather than in the first request's latency.
        self.index.search(torch.full((1, self.dim), self.dim ** -0.5, device=self.device), 1, rerank=self.rerank)
        warm_score_kernels(self.device, self.dim, self.k_default, self.max_k, self.rerank)

    def check_k(self, k: np.ndarray | None, rows: int) -> int:
        """The request's k (:func:`contract.check_k`; ``k_default`` when absent)."""
        return C.check_k(k, rows, self.k_default, self.max_k)

    def check(self, embedding: np.ndarray | None, k: np.ndarray | None) -> tuple[np.ndarray, int]:
        """The request's ``(embedding, k)``."""
        x = C.check_embedding(embedding, self.dim)
        return x, self.check_k(k, x.shape[0])

    def run(self, items: Sequence[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request: ``(scores, ids)`` (rows, its k)."""
        import torch

        queries = torch.from_numpy(np.concatenate([x for x, _ in items])).to(self.device)
        scores, ids = self.index.search(queries, max(k for _, k in items), rerank=self.rerank)
        scores = np.asarray(scores.cpu().numpy() if hasattr(scores, "cpu") else scores, dtype=np.float32)
        ids = np.asarray(ids.cpu().numpy() if hasattr(ids, "cpu") else ids, dtype=np.int64)
        counts = [x.shape[0] for x, _ in items]
        return [(s[:, :k], d[:, :k]) for (_, k), s, d in zip(items, C.split_rows(scores, counts), C.split_rows(ids, counts))]


class Search:
    """The fused ``omnisearch``: ``text`` BYTES (B, 1) [+ optional ``k``] → ``scores``, ``ids`` (B, k).

    :class:`Tokenize`, :class:`Encode` and :class:`Score` in turn, in one process: each runs once
    over the batch's good requests, and a request that fails a step (too many tokens) drops out
    with its own error. All three read their files from the one ``directory`` and their options
    from the one ``params`` dict.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str], args: dict):
        self.tokenize = Tokenize(directory, params)
        self.encoder = Encode(directory, params, args)
        self.score = Score(directory, params, args)

    def check(self, text: np.ndarray | None, k: np.ndarray | None) -> tuple[list[bytes], int]:
        """The request's rows and k (checked before any work, as the ensemble's steps would)."""
        rows = self.tokenize.check(text)
        return rows, self.score.check_k(k, len(rows))

    def run(self, items: Sequence[tuple[list[bytes], int]]) -> list[tuple[np.ndarray, np.ndarray] | RequestError]:
        """Per request: ``(scores, ids)`` (rows, its k), or the error of the step that refused it."""
        results: list = self.tokenize.run([rows for rows, _ in items])
        good = [i for i, result in enumerate(results) if not isinstance(result, RequestError)]
        if good:
            embeddings = self.encoder.run([results[i] for i in good])
            scored = self.score.run([(embedding, items[i][1]) for i, (embedding,) in zip(good, embeddings)])
            for i, result in zip(good, scored):
                results[i] = result
        return results
