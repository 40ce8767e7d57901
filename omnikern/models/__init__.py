"""OmniSearchSage towers, the multi-tower container and the trainer (issue: model and trainer)."""

from omnikern.models.towers import (
    FixedTower,
    HashEmbeddingBag,
    LearnedItemTower,
    ModelOutput,
    OmniSearchSage,
    QueryTower,
    TaskBatch,
)

__all__ = [
    "FixedTower",
    "HashEmbeddingBag",
    "LearnedItemTower",
    "ModelOutput",
    "OmniSearchSage",
    "QueryTower",
    "TaskBatch",
]
