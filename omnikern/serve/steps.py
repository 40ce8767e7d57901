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
    """``embedding`` FP32 (B, D) [+ optional ``k`` INT32 (B, 1), ``entity_type`` BYTES (B, 1)] →
    ``scores`` FP32, ``ids`` INT64, ``entity_types`` BYTES (B, k).

    The index is an index set or sharded index directory (``index/``, one index per entity type,
    :func:`omnikern.sharded_index.read_index_set`) or one ``index.safetensors`` file (loaded with
    ``index_class``, default ``omnikern:Int8Index``; its entity type is ``item``). Each index is
    searched once per batch with the largest k asked for (fused int8 scoring + top-k); every
    request then gets its own rows, its own k, and its own entity type's results or all types'
    merged by score (contract). Parameters: ``k_default`` (required), ``max_k``, ``rerank``,
    ``index_class``, ``torch_threads``.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str], args: dict):
        import torch

        self.device = instance_device(args, params)
        self.k_default = int(params["k_default"])
        self.max_k = int(params.get("max_k", C.MAX_K))
        self.rerank = int(params.get("rerank", "0"))
        self.indexes = load_indexes(directory, params, self.device)
        self.types = sorted(self.indexes)
        dims = {t: int(index.dim) for t, index in self.indexes.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"the served indexes must share one dim, got {dims}")
        self.dim = dims[self.types[0]]
        # The first search pays a one-time setup (~0.75 s on the 2-core CPU, measured in the
        # server); pay it here rather than in the first request's latency.
        for index in self.indexes.values():
            index.search(torch.full((1, self.dim), self.dim ** -0.5, device=self.device), 1, rerank=self.rerank)
        warm_score_kernels(self.device, self.dim, self.k_default, self.max_k, self.rerank)

    def check_k(self, k: np.ndarray | None, rows: int) -> int:
        """The request's k (:func:`contract.check_k`; ``k_default`` when absent)."""
        return C.check_k(k, rows, self.k_default, self.max_k)

    def check_entity_type(self, entity_type: np.ndarray | None, rows: int) -> str | None:
        """The request's entity type, or None for every served type (:func:`contract.check_entity_type`)."""
        return C.check_entity_type(entity_type, rows, self.types)

    def check(self, embedding: np.ndarray | None, k: np.ndarray | None,
              entity_type: np.ndarray | None = None) -> tuple[np.ndarray, int, str | None]:
        """The request's ``(embedding, k, entity type or None)``."""
        x = C.check_embedding(embedding, self.dim)
        return x, self.check_k(k, x.shape[0]), self.check_entity_type(entity_type, x.shape[0])

    def run(self, items: Sequence[tuple]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per request: ``(scores, ids, entity_types)`` (rows, its k)."""
        import torch

        queries = torch.from_numpy(np.concatenate([item[0] for item in items])).to(self.device)
        k = max(item[1] for item in items)
        asked = {item[2] for item in items}
        per_type = {}
        for t in (self.types if None in asked else sorted(asked)):
            scores, ids = self.indexes[t].search(queries, k, rerank=self.rerank)
            per_type[t] = (np.asarray(scores.cpu().numpy() if hasattr(scores, "cpu") else scores, dtype=np.float32),
                           np.asarray(ids.cpu().numpy() if hasattr(ids, "cpu") else ids, dtype=np.int64))
        merged = merge_types(per_type, k) if None in asked else None
        counts = [item[0].shape[0] for item in items]
        starts = np.cumsum([0, *counts])
        out = []
        for (_, k_i, t), lo, hi in zip(items, starts[:-1], starts[1:]):
            if t is None:
                scores, ids, types = (a[lo:hi, :k_i] for a in merged)
            else:
                scores, ids = (a[lo:hi, :k_i] for a in per_type[t])
                types = np.where(ids >= 0, t.encode(), b"").astype(np.object_)
            out.append((scores, ids, types))
        return out


def load_indexes(directory: str | os.PathLike, params: dict[str, str], device) -> dict:
    """The scorer's indexes by entity type: the ``index/`` directory of the version directory (an
    index set or one sharded index) if there is one, else ``index.safetensors`` loaded with the
    ``index_class`` parameter, as entity type ``item``."""
    folder = os.path.join(directory, C.INDEX_DIR)
    if os.path.isdir(folder):
        from omnikern.sharded_index import read_index_set

        return read_index_set(folder, device=device)  # a lone sharded index reads as type "item"
    module, _, name = params.get("index_class", "omnikern:Int8Index").partition(":")
    index_class = getattr(importlib.import_module(module), name)
    return {C.SINGLE_INDEX_TYPE: index_class.load(os.path.join(directory, C.INDEX_FILE), device=device)}


def merge_types(per_type: dict[str, tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges per-type ``(scores, ids)`` (Q, k) lists into one (Q, k) top-k with each id's type:
    by score, equal scores in sorted type order and then each list's own order; ``-inf`` / ``-1`` /
    ``""`` in the gaps."""
    types = sorted(per_type)
    scores = np.concatenate([per_type[t][0] for t in types], axis=1)
    ids = np.concatenate([per_type[t][1] for t in types], axis=1)
    labels = np.concatenate([np.full(per_type[t][1].shape, t.encode(), dtype=np.object_) for t in types], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    labels = np.where(ids >= 0, np.take_along_axis(labels, order, 1), b"").astype(np.object_)
    return scores, ids, labels


class Search:
    """The fused ``omnisearch``: ``text`` BYTES (B, 1) [+ optional ``k``, ``entity_type``] →
    ``scores``, ``ids``, ``entity_types`` (B, k).

    :class:`Tokenize`, :class:`Encode` and :class:`Score` in turn, in one process: each runs once
    over the batch's good requests, and a request that fails a step (too many tokens) drops out
    with its own error. All three read their files from the one ``directory`` and their options
    from the one ``params`` dict.
    """

    def __init__(self, directory: str | os.PathLike, params: dict[str, str], args: dict):
        self.tokenize = Tokenize(directory, params)
        self.encoder = Encode(directory, params, args)
        self.score = Score(directory, params, args)

    def check(self, text: np.ndarray | None, k: np.ndarray | None,
              entity_type: np.ndarray | None = None) -> tuple[list[bytes], int, str | None]:
        """The request's rows, k and entity type (checked before any work, as the ensemble's steps would)."""
        rows = self.tokenize.check(text)
        return rows, self.score.check_k(k, len(rows)), self.score.check_entity_type(entity_type, len(rows))

    def run(self, items: Sequence[tuple]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | RequestError]:
        """Per request: ``(scores, ids, entity_types)`` (rows, its k), or the error of the step that refused it."""
        results: list = self.tokenize.run([item[0] for item in items])
        good = [i for i, result in enumerate(results) if not isinstance(result, RequestError)]
        if good:
            embeddings = self.encoder.run([results[i] for i in good])
            scored = self.score.run([(embedding, items[i][1], items[i][2])
                                     for i, (embedding,) in zip(good, embeddings)])
            for i, result in zip(good, scored):
                results[i] = result
        return results
