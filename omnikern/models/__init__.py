"""OmniSearchSage towers, the multi-tower container and the trainer (issue: model and trainer)."""

from omnikern.models.evaluate import evaluate_exact, evaluate_topk
from omnikern.models.towers import (
    FixedTower,
    HashEmbeddingBag,
    LearnedItemTower,
    ModelOutput,
    OmniSearchSage,
    QueryTower,
    TaskBatch,
    build_recipe_model,
)

__all__ = [
    "FixedTower",
    "HashEmbeddingBag",
    "LearnedItemTower",
    "ModelOutput",
    "OmniSearchSage",
    "QueryTower",
    "TaskBatch",
    "build_recipe_model",
    "evaluate_exact",
    "evaluate_topk",
]
