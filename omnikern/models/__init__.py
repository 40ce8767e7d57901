"""The OmniSearchSage model: encoders, item towers, the container, the loss module, checkpoints and the trainer.

One module per idea: ``encoders`` (query tower, pooling, the zero-shot MiniLM), ``item_towers``
(learned and fixed), ``container`` (towers by key, the summed loss), ``loss`` (the loss module and
its sketches), ``checkpoint`` (training and query-tower checkpoints), ``trainer`` (the loop),
``config``, ``evaluate`` and ``recipe_eval``. The public names load on first use.
"""

from omnikern._lazy import lazy_exports

_EXPORTS = {
    "Config": "omnikern.models.config",
    "FixedTower": "omnikern.models.item_towers",
    "HashEmbeddingBag": "omnikern.models.item_towers",
    "LearnedItemTower": "omnikern.models.item_towers",
    "ModelOutput": "omnikern.models.container",
    "OmniSearchSage": "omnikern.models.container",
    "QueryTower": "omnikern.models.encoders",
    "Trainer": "omnikern.models.trainer",
    "evaluate_exact": "omnikern.models.evaluate",
    "evaluate_topk": "omnikern.models.evaluate",
    "load_query_tower": "omnikern.models.checkpoint",
    "save_query_tower": "omnikern.models.checkpoint",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
