"""The contract between the exported model repository, its ``model.py`` files and the clients.

Tensor and model names live here only: :mod:`omnikern.serve.export` writes them into every
``config.pbtxt``, the generated ``model.py`` files import them, and :mod:`omnikern.serve.client`
sends and reads them. The request checks that every ``model.py`` runs are plain numpy functions
here too, so they are tested without a server.

Shapes (B = rows of one request; Triton adds B in front of every ``dims``):

=================  =========  ==========  =====================================================
tensor             type       dims        meaning
=================  =========  ==========  =====================================================
``text``           BYTES      [1]         one UTF-8 query per row, at most MAX_TEXT_BYTES bytes
``k``              INT32      [1]         optional: results per row, 1..max_k, same on every row
``entity_type``    BYTES      [1]         optional: search only this entity type's index (same on
                                          every row); absent: every served type, merged by score
``input_ids``      INT64      [-1]        WordPiece ids (B, T), padded with the [PAD] id (the
                                          tokenizer pads every row to T = its max length)
``attention_mask`` INT64      [-1]        1 for tokens, 0 for padding (B, T)
``embedding``      FP32       [D]         L2-normalised query embedding (B, D)
``scores``         FP32       [-1]        (B, k) best first; ``-inf`` where the index has < k rows (the gap marker)
``ids``            INT64      [-1]        (B, k) item ids (may be negative); ``-1`` in the gaps
``entity_types``   BYTES      [-1]        (B, k) the entity type each id comes from; ``""`` in the gaps
=================  =========  ==========  =====================================================

A repository serves one index per entity type (an index set, :mod:`omnikern.sharded_index`) or one
``Int8Index`` file, whose type is ``item``. Without ``entity_type`` the per-type top-k lists are
merged by score; equal scores keep the entity types in sorted order, then each index's own order.

A request that leaves out ``text`` is refused by the server with INVALID_ARGUMENT, but the message
depends on the other inputs: with none at all Triton says "missing required input(s) ['text']";
an ``omnisearch`` request with ``k`` and no ``text`` passes Triton's input count (1 to 2) and its
ensemble scheduler answers "unexpected deadlock, at least one output is not set while no more
ensemble steps can be made" (tritonserver 2.51), which means the same thing. The ensembles cannot
check their inputs themselves, so :class:`omnikern.serve.Client` checks ``REQUIRED_INPUTS`` before
sending.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ---- model names ----
TOKENIZER = "tokenizer"
QUERY_ENCODER = "query_encoder"
SCORER = "scorer"
OMNISEARCH = "omnisearch"  # ensemble or fused python model: text (+ k) -> scores, ids
ENCODE = "encode"  # ensemble: text -> embedding

# ---- tensor names ----
TEXT = "text"
K = "k"
ENTITY_TYPE = "entity_type"
ENTITY_TYPES = "entity_types"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"
SCORES = "scores"
IDS = "ids"

# What each ensemble cannot do without (the client checks before sending; see the module docstring).
REQUIRED_INPUTS = {OMNISEARCH: (TEXT,), ENCODE: (TEXT,)}

# ---- files inside the version directories ----
# The query encoder's version directory is a query-tower directory (omnikern.models.checkpoint)
# plus, for encoder_runtime="onnx", the graph in place of the weights.
WORDPIECE_FILE = "wordpiece.json"  # the tokenizer's: WordPieceTokenizer.save output
ENCODER_ONNX_FILE = "query_tower.onnx"  # the tower as one ONNX graph (encoder_runtime="onnx")
INDEX_FILE = "index.safetensors"  # Int8Index.save output
INDEX_DIR = "index"  # or an index set / sharded index directory (omnikern.sharded_index)
SINGLE_INDEX_TYPE = "item"  # the entity type of a repository that serves one Int8Index file

# ---- limits ----
# A query longer than this is refused, not truncated: 4 KiB is ~40x the longest recipe title and
# still bounds what one request can make the tokenizer do.
MAX_TEXT_BYTES = 4096
MAX_K = 1000

# ---- encoder runtimes (export_triton(encoder_runtime=...)) ----
ENCODER_RUNTIMES = ("torch", "onnx")

# ---- how omnisearch runs (export_triton(pipeline=...)) ----
# "ensemble": Triton chains the tokenizer, query_encoder and scorer models (three stubs);
# "fused": one python-backend model runs the same three steps in one stub.
PIPELINES = ("ensemble", "fused")


class RequestError(ValueError):
    """What is wrong with one request; the model answers that request with INVALID_ARG."""


def check_texts(text: np.ndarray | None, max_bytes: int = MAX_TEXT_BYTES) -> list[bytes]:
    """Returns the UTF-8 bytes of each row of a ``text`` input of shape (B, 1).

    Raises:
        RequestError: missing, not BYTES, not (B, 1), B == 0, a row over ``max_bytes`` bytes, or
            invalid UTF-8.
    """
    if text is None:
        raise RequestError(f"missing input {TEXT!r}")
    if text.dtype != np.object_:
        raise RequestError(f"{TEXT} must be BYTES, got {text.dtype}")
    if text.ndim != 2 or text.shape[1] != 1:
        raise RequestError(f"{TEXT} must have shape (batch, 1), got {text.shape}")
    if text.shape[0] == 0:
        raise RequestError(f"{TEXT} is an empty batch (0 rows)")
    rows = []
    for i, item in enumerate(text[:, 0]):
        data = item.encode("utf-8") if isinstance(item, str) else item
        if not isinstance(data, bytes):
            raise RequestError(f"{TEXT}[{i}] must be bytes, got {type(item).__name__}")
        if len(data) > max_bytes:
            raise RequestError(f"{TEXT}[{i}] is {len(data)} bytes, the limit is {max_bytes} bytes")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(f"{TEXT}[{i}] is not valid UTF-8 (byte {error.start})") from None
        rows.append(data)
    return rows


def check_tokens(input_ids: np.ndarray | None, attention_mask: np.ndarray | None, vocab_size: int,
                 max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(input_ids, attention_mask)`` (B, T) int64 after checking them.

    Raises:
        RequestError: missing, not INT64, not 2-D with equal shapes, B == 0, T == 0 or
            T > ``max_tokens``, ids outside ``[0, vocab_size)``, a mask value other than 0/1, or a
            row with no attended token (it has no embedding: its mean pooling is empty).
    """
    for name, x in ((INPUT_IDS, input_ids), (ATTENTION_MASK, attention_mask)):
        if x is None:
            raise RequestError(f"missing input {name!r}")
        if x.dtype != np.int64:
            raise RequestError(f"{name} must be INT64, got {x.dtype}")
        if x.ndim != 2:
            raise RequestError(f"{name} must have shape (batch, tokens), got {x.shape}")
    if input_ids.shape != attention_mask.shape:
        raise RequestError(f"{INPUT_IDS} and {ATTENTION_MASK} must have the same shape, got {input_ids.shape} "
                           f"and {attention_mask.shape}")
    if input_ids.shape[0] == 0:
        raise RequestError(f"{INPUT_IDS} is an empty batch (0 rows)")
    if input_ids.shape[1] == 0:
        raise RequestError(f"{INPUT_IDS} has 0 tokens per row")
    if input_ids.shape[1] > max_tokens:
        raise RequestError(f"{INPUT_IDS} has {input_ids.shape[1]} tokens per row, the limit is {max_tokens}")
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise RequestError(f"{INPUT_IDS} must be in [0, {vocab_size}), got values in "
                           f"[{input_ids.min()}, {input_ids.max()}]")
    if attention_mask.size and not np.isin(attention_mask, (0, 1)).all():
        raise RequestError(f"{ATTENTION_MASK} must hold only 0 and 1")
    empty = np.flatnonzero(attention_mask.sum(axis=1) == 0)
    if empty.size:
        raise RequestError(f"{ATTENTION_MASK} has rows with no attended token (rows {empty[:5].tolist()})")
    return input_ids, attention_mask


def check_embedding(embedding: np.ndarray | None, dim: int) -> np.ndarray:
    """Returns the (B, dim) float32 ``embedding`` after checking it.

    Raises:
        RequestError: missing, not FP32, not (B, dim), B == 0, or NaN/inf.
    """
    if embedding is None:
        raise RequestError(f"missing input {EMBEDDING!r}")
    if embedding.dtype != np.float32:
        raise RequestError(f"{EMBEDDING} must be FP32, got {embedding.dtype}")
    if embedding.ndim != 2 or embedding.shape[1] != dim:
        raise RequestError(f"{EMBEDDING} must have shape (batch, {dim}), got {embedding.shape}")
    if embedding.shape[0] == 0:
        raise RequestError(f"{EMBEDDING} is an empty batch (0 rows)")
    if not np.isfinite(embedding).all():
        raise RequestError(f"{EMBEDDING} must be finite, got NaN or inf")
    return embedding


def check_k(k: np.ndarray | None, rows: int, default: int, max_k: int = MAX_K) -> int:
    """Returns the request's k: ``default`` when the optional ``k`` input is absent.

    Raises:
        RequestError: ``k`` not INT32 of shape (rows, 1), rows disagreeing, or k outside 1..max_k.
    """
    if k is None:
        return default
    if k.dtype != np.int32:
        raise RequestError(f"{K} must be INT32, got {k.dtype}")
    if k.shape != (rows, 1):
        raise RequestError(f"{K} must have shape ({rows}, 1), one per row, got {k.shape}")
    values = np.unique(k)
    if values.size != 1:
        raise RequestError(f"{K} must be the same on every row of a request, got {values.tolist()[:5]}")
    value = int(values[0])
    if not 1 <= value <= max_k:
        raise RequestError(f"{K} must be in 1..{max_k}, got {value}")
    return value


def check_entity_type(entity_type: np.ndarray | None, rows: int, served: Sequence[str]) -> str | None:
    """Returns the request's entity type, or None (search every served type) when the optional
    ``entity_type`` input is absent.

    Raises:
        RequestError: not BYTES of shape (rows, 1), rows disagreeing, invalid UTF-8, or a type not
            served (the message lists the served ones).
    """
    if entity_type is None:
        return None
    if entity_type.dtype != np.object_:
        raise RequestError(f"{ENTITY_TYPE} must be BYTES, got {entity_type.dtype}")
    if entity_type.shape != (rows, 1):
        raise RequestError(f"{ENTITY_TYPE} must have shape ({rows}, 1), one per row, got {entity_type.shape}")
    try:
        values = {v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in entity_type[:, 0]}
    except UnicodeDecodeError:
        raise RequestError(f"{ENTITY_TYPE} is not valid UTF-8") from None
    if len(values) != 1:
        raise RequestError(f"{ENTITY_TYPE} must be the same on every row of a request, got {sorted(values)[:5]}")
    value = values.pop()
    if value not in served:
        raise RequestError(f"{ENTITY_TYPE} {value!r} is not served; the served entity types are {sorted(served)}")
    return value


def trim_tokens(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops the trailing columns where every row is padding (mask 0): (B, T) -> (B, T'), T' the
    longest row (at least 1 column)."""
    used = np.flatnonzero(attention_mask.any(axis=0))
    width = int(used[-1]) + 1 if used.size else 1
    return input_ids[:, :width], attention_mask[:, :width]


def split_rows(batch: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Splits the rows of ``batch`` into consecutive parts of ``counts`` rows (sum == len(batch))."""
    assert sum(counts) == batch.shape[0], (counts, batch.shape)
    return np.split(batch, np.cumsum(counts)[:-1]) if counts else []


def pad_tokens(parts: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int,
               width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacks (ids, mask) pairs of different widths into one (sum B, width) pair, padded with
    ``pad_id`` / 0 on the right (masked tokens change nothing downstream); ``width`` defaults to
    the widest part and must be at least that."""
    widest = max(ids.shape[1] for ids, _ in parts)
    width = widest if width is None else width
    assert width >= widest, (width, widest)
    rows = sum(ids.shape[0] for ids, _ in parts)
    out_ids = np.full((rows, width), pad_id, dtype=np.int64)
    out_mask = np.zeros((rows, width), dtype=np.int64)
    start = 0
    for ids, mask in parts:
        out_ids[start:start + ids.shape[0], :ids.shape[1]] = ids
        out_mask[start:start + ids.shape[0], :ids.shape[1]] = mask
        start += ids.shape[0]
    return out_ids, out_mask
