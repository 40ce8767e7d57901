"""Synthetic batches with the published OmniSearchSage shapes, to exercise full-size towers.

Nothing here is meaningful data: values are seeded random numbers laid out exactly as the towers
expect them.

* Queries: WordPiece-like ``input_ids`` ``(B, T)`` starting with ``[CLS]`` (101) and ending with
  ``[SEP]`` (102) then ``[PAD]`` (0), ``T ≤ 64``, and ``attention_mask``; ids from a 30,522 vocab.
* Pins: 19 text fields, each a bag of hashed n-gram token ids in the ``nn.EmbeddingBag`` layout
  (``<field>_input_ids`` (N,), ``<field>_offsets`` (B,)), ids in ``[1, FEATURISER_VOCAB)``, 0 to
  ``max_tokens`` tokens per bag (empty bags included); ``pinsage`` and ``itemsage`` ``(B, 256)``
  float32; ``visual`` ``(B, 128)`` uint8 (a 1024-bit signature).
* Products: the same text fields and ``itemsage`` ``(B, 256)``; image-level ``pinsage``
  ``(B, I, 256)`` and ``visual`` ``(B, I, 128)`` with ``pinsage_mask``/``visual_mask`` ``(B, I)``
  (1 to ``max_images`` images per product, the rest masked).
* Ids: int64 entity ids, positives first then ``neg_ratio · B`` random negatives per task.

:func:`synthetic_tasks` returns the published multi-task mix, pairs split 8:4:2:2 across
query→pin, query→product, query→query and query→product (offsite).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnikern.data.contract import FEATURISER_VOCAB, LEGACY_DIM, PUBLISHED_TEXT_FIELDS, VISUAL_BITS, TaskBatch

QUERY_VOCAB = 30_522
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
FIRST_WORDPIECE_ID = 1_000  # below it: [unused*], special tokens and single characters in BERT vocabs

PUBLISHED_TASKS = (("pin", 8), ("product", 4), ("query", 2), ("product", 2))


def synthetic_query_features(batch: int, generator: torch.Generator, max_length: int = 64) -> dict[str, torch.Tensor]:
    """Returns ``{"input_ids", "attention_mask"}`` (B, T) int64 with ``[CLS] … [SEP]`` and padding."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS] token [SEP]), got {max_length}")
    lengths = torch.randint(3, max_length + 1, (batch,), generator=generator)
    width = int(lengths.max()) if batch else 2
    ids = torch.randint(FIRST_WORDPIECE_ID, QUERY_VOCAB, (batch, width), generator=generator)
    positions = torch.arange(width).expand(batch, width)
    mask = (positions < lengths.unsqueeze(1)).to(torch.int64)
    ids = ids * mask
    ids[:, 0] = CLS_ID
    ids[torch.arange(batch), lengths - 1] = SEP_ID
    return {"input_ids": ids, "attention_mask": mask}


def synthetic_item_features(
    batch: int,
    generator: torch.Generator,
    multi_image: bool,
    text_fields: Sequence[str] = PUBLISHED_TEXT_FIELDS,
    max_tokens: int = 24,
    max_images: int = 4,
) -> dict[str, torch.Tensor]:
    """Returns one entity batch of pin (``multi_image=False``) or product features (module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for name in text_fields:
        lengths = torch.randint(0, max_tokens + 1, (batch,), generator=generator)
        out[f"{name}_input_ids"] = torch.randint(1, FEATURISER_VOCAB, (int(lengths.sum()),), generator=generator)
        out[f"{name}_offsets"] = torch.cumsum(lengths, 0) - lengths
    out["itemsage"] = torch.randn(batch, LEGACY_DIM, generator=generator)
    visual_bytes = VISUAL_BITS // 8
    if not multi_image:
        out["pinsage"] = torch.randn(batch, LEGACY_DIM, generator=generator)
        out["visual"] = torch.randint(0, 256, (batch, visual_bytes), generator=generator, dtype=torch.uint8)
        return out
    images = torch.randint(1, max_images + 1, (batch,), generator=generator)
    mask = torch.arange(max_images).expand(batch, max_images) < images.unsqueeze(1)
    out["pinsage"] = torch.randn(batch, max_images, LEGACY_DIM, generator=generator)
    out["pinsage_mask"] = mask
    out["visual"] = torch.randint(0, 256, (batch, max_images, visual_bytes), generator=generator, dtype=torch.uint8)
    out["visual_mask"] = mask.clone()
    return out


def synthetic_task(candidate_type: str, num_pairs: int, neg_ratio: int, generator: torch.Generator,
                   query_max_length: int = 64, **item_kwargs) -> TaskBatch:
    """Returns one task batch: ``num_pairs`` queries, positives and ``neg_ratio · num_pairs`` negatives
    of ``candidate_type`` (``"pin"``, ``"product"`` or ``"query"``); queries have at most
    ``query_max_length`` tokens (published 64)."""
    if candidate_type not in ("pin", "product", "query"):
        raise ValueError(f"candidate_type must be 'pin', 'product' or 'query', got {candidate_type!r}")
    if num_pairs < 1 or neg_ratio < 0:
        raise ValueError(f"num_pairs must be ≥ 1 and neg_ratio ≥ 0, got {num_pairs} and {neg_ratio}")
    rows = num_pairs * (1 + neg_ratio)
    if candidate_type == "query":
        candidates = synthetic_query_features(rows, generator, query_max_length)
    else:
        candidates = synthetic_item_features(rows, generator, multi_image=candidate_type == "product", **item_kwargs)
    return TaskBatch(
        candidate_type=candidate_type,
        query=synthetic_query_features(num_pairs, generator, query_max_length),
        candidates=candidates,
        query_ids=torch.randint(1, 2**62, (num_pairs,), generator=generator),
        candidate_ids=torch.randint(1, 2**62, (rows,), generator=generator),
    )


def synthetic_tasks(batch_size: int = 10_240, neg_ratio: int = 4, seed: int = 0,
                    tasks: Sequence[tuple[str, int]] = PUBLISHED_TASKS, **kwargs) -> list[TaskBatch]:
    """Returns the multi-task batches of one step: ``batch_size`` pairs split across ``tasks`` in
    proportion to their weights (published 8:4:2:2 over pin, product, query, product-offsite), each
    with at least one pair. ``kwargs`` go to :func:`synthetic_task` (``query_max_length``) and
    :func:`synthetic_item_features` (``max_tokens``, ``max_images``, ``text_fields``).

    Raises:
        ValueError: ``batch_size`` smaller than the number of tasks, or a bad task weight.
    """
    if batch_size < len(tasks):
        raise ValueError(f"batch_size must be at least the number of tasks ({len(tasks)}), got {batch_size}")
    total = sum(w for _, w in tasks)
    if any(w <= 0 for _, w in tasks):
        raise ValueError(f"task weights must be positive, got {list(tasks)}")
    generator = torch.Generator().manual_seed(seed)
    return [synthetic_task(kind, max(1, batch_size * w // total), neg_ratio, generator, **kwargs)
            for kind, w in tasks]
