"""The data contract between the data layer and the models: the task batch and the feature layout.

A :class:`TaskBatch` is what a sampler hands the container for one task; the constants name the
published input sizes the towers and the synthetic data agree on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

LEGACY_DIM = 256
VISUAL_BITS = 1024
# Token-id space of the text featuriser (docs/text.md, "Item featuriser"): char trigrams (64,000), unigrams (200,000) and
# bigrams (1,000,000), 1-based in disjoint ranges with 0 reserved in each.
FEATURISER_VOCAB = 64_000 + 200_000 + 1_000_000 + 3

# 19 text fields per pin/product as published (titles, descriptions, brand, colours, board titles,
# engaged queries, generated captions, ...). The names are ours; only the count and roles matter.
PUBLISHED_TEXT_FIELDS = (
    "title", "description", "brand", "colors", "product_type", "gender", "size", "material", "pattern",
    "board_titles", "board_descriptions", "engaged_queries", "save_queries", "click_queries",
    "image_caption", "link_title", "link_description", "site_name", "category_path",
)


@dataclass
class TaskBatch:
    """One task's pairs: B queries, and B positives followed by R random negatives of one entity type.

    Attributes:
        candidate_type: entity type of the candidates (``"item"``, ``"pin"``, ``"query"`` ...).
        query: query-tower inputs for the B queries (``input_ids``, ``attention_mask`` (B, T)).
        candidates: inputs of every tower of ``candidate_type`` for B + R rows (positives first).
        query_ids: (B,) int64 query entity ids.
        candidate_ids: (B + R,) int64 candidate entity ids.
        weights: optional (B,) per-pair weights.
    """

    candidate_type: str
    query: Mapping[str, torch.Tensor]
    candidates: Mapping[str, torch.Tensor]
    query_ids: torch.Tensor
    candidate_ids: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.query_ids.shape[0])
