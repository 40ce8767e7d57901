"""omnikern inside sentence-transformers: the fused loss as a ``loss=``, and query towers that cross over.

The only omnikern module that imports ``sentence_transformers`` (extra ``omnikern[st]``).
docs/sentence-transformers.md has the conventions, the parity tests and the bench.

* :class:`SampledSoftmaxRankingLoss` is what ``SentenceTransformerTrainer(loss=...)`` takes:
  columns (anchor, positive, negative_1, …, negative_n) like ``MultipleNegativesRankingLoss``
  (MNRL), computed by :class:`omnikern.SampledSoftmaxLoss` in one fused pass (Matryoshka dims
  included, no B × N logits held), with optional learned temperature, id masking and logQ
  correction from ids carried in the dataset's ``label`` column (:func:`add_id_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sentence_transformers.util import cos_sim
from torch import nn

from omnikern.models.loss import SampledSoftmaxLoss

# The dataset column that carries ids to the loss: sentence-transformers' collator passes the
# column named "label" (and only it) to the loss as a tensor; every other column is tokenized.
LABEL_COLUMN = "label"
HARD_NEGATIVE_MODES = {"joint": "mixed_concat", "separate": "mixed_sum"}


def add_id_labels(dataset, id_columns: Sequence[str], label_column: str = LABEL_COLUMN):
    """Returns ``dataset`` with the int ``id_columns`` moved into one ``label`` column of id lists.

    One id column per text column, in the text columns' order (anchor id, positive id, negative
    ids). sentence-transformers hands the ``label`` column to the loss as a (B, columns) int64
    tensor, which :class:`SampledSoftmaxRankingLoss` reads as ``query_ids, pos_ids, neg_ids``.

    Raises:
        ValueError: a column is missing, or the dataset already has a ``label`` column.
    """
    id_columns = list(id_columns)
    missing = [c for c in id_columns if c not in dataset.column_names]
    if not id_columns or missing:
        raise ValueError(f"id_columns must name columns of the dataset, got {id_columns} (missing {missing})")
    if label_column in dataset.column_names:
        raise ValueError(f"the dataset already has a {label_column!r} column; the ids need it")
    with_label = dataset.map(lambda row: {label_column: [int(row[c]) for c in id_columns]})
    return with_label.remove_columns(id_columns)


def _embedding_dim(model) -> int | None:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        getter = getattr(model, name, None)
        if callable(getter):
            return getter()
    return None


def _embed_columns(model, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """One ``sentence_embedding`` per column, the way MNRL embeds them (same forward passes, so
    the same dropout draws)."""
    try:
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:  # older sentence-transformers: one forward per column
        return [model(features)["sentence_embedding"] for features in sentence_features]
    return embed_columns(model, sentence_features)


class SampledSoftmaxRankingLoss(nn.Module):
    """Returns MNRL's loss (anchor → positive among every positive and hard negative), fused.

    With the defaults (scale 20 fixed, one dim, no ids) the value and gradients equal
    ``MultipleNegativesRankingLoss(model)``'s; with ``matryoshka_dims`` they equal
    ``MatryoshkaLoss(model, MNRL(model), matryoshka_dims, matryoshka_weights)``'s, in one pass.

    Inputs are those of MNRL: ``sentence_features`` for the columns (anchor, positive,
    negative_1, …, negative_n); ``labels`` None (no ids), or a (B, columns) int64 tensor of ids, one
    per text column (:func:`add_id_labels` builds that column). With ids, a column whose id equals a
    row's positive id is no negative for that row, nor is an in-batch positive of the same anchor
    id (``id_masking``); and ``logq_correction`` subtracts each candidate's estimated sampling
    log-frequency (docs/loss.md). When the trainer runs distributed, positives and negatives are
    gathered from every rank (with gradient), as MNRL's ``gather_across_devices=True``.

    Args:
        model: the SentenceTransformer being trained.
        scale: the initial (or fixed) logit scale, ``1 / temperature``; MNRL's default 20.
        learn_scale: learn ``log scale`` (a parameter the trainer's optimiser picks up, clamped to
            ``max_scale``); False (default) keeps it fixed, as MNRL does.
        matryoshka_dims, matryoshka_weights: prefix dims and their weights (default 1 each, as
            ``MatryoshkaLoss``); None: the model's full dim alone.
        hard_negatives: ``"joint"`` (default, MNRL): one softmax over positives and every row's
            hard negatives; ``"separate"``: omnikern's published sum of two softmaxes, in-batch
            positives and hard negatives apart (``neg_mode="mixed_sum"``).
        id_masking: use ids from ``labels`` when a batch has them (False: ignore them).
        logq_correction: logQ-correct from the ids; every batch must then carry ids.
        max_in_batch_negatives, sketch_width, sketch_depth, impl, process_group: as
            :class:`omnikern.SampledSoftmaxLoss`.
        similarity_fct: only cosine (``sentence_transformers.util.cos_sim``, the default) is fused.

    Raises:
        ValueError: a non-cosine ``similarity_fct``, ``logq_correction`` without ``id_masking``,
            a bad ``hard_negatives`` or scale, or no ``matryoshka_dims`` and no model dim.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        learn_scale: bool = False,
        max_scale: float = 100.0,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
        hard_negatives: str = "joint",
        id_masking: bool = True,
        logq_correction: bool = False,
        max_in_batch_negatives: int | None = None,
        sketch_width: int = 2**20,
        sketch_depth: int = 2,
        impl: str = "auto",
        process_group=None,
        similarity_fct=cos_sim,
    ) -> None:
        super().__init__()
        if similarity_fct is not cos_sim:
            raise ValueError(
                f"similarity_fct must be sentence_transformers.util.cos_sim (the fused loss normalises every "
                f"prefix), got {getattr(similarity_fct, '__name__', similarity_fct)!r}"
            )
        if hard_negatives not in HARD_NEGATIVE_MODES:
            raise ValueError(f"hard_negatives must be one of {tuple(HARD_NEGATIVE_MODES)}, got {hard_negatives!r}")
        if logq_correction and not id_masking:
            raise ValueError("logq_correction=True needs id_masking=True (both read the ids in labels)")
        if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if matryoshka_dims is None:
            if matryoshka_weights is not None:
                raise ValueError("matryoshka_weights needs matryoshka_dims, got matryoshka_dims=None")
            dim = _embedding_dim(model)
            if dim is None:
                raise ValueError("matryoshka_dims is required when the model does not report its embedding dimension")
            matryoshka_dims = [dim]
        matryoshka_dims = [int(d) for d in matryoshka_dims]
        if matryoshka_weights is None:
            matryoshka_weights = [1.0] * len(matryoshka_dims)
        self.model = model
        self.hard_negatives = hard_negatives
        self.id_masking = id_masking
        self.sampled_softmax = SampledSoftmaxLoss(
            neg_mode=HARD_NEGATIVE_MODES[hard_negatives],
            temperature=1.0 / scale,
            learn_temperature=learn_scale,
            max_scale=max_scale,
            dims=matryoshka_dims,
            dim_weights=[float(w) for w in matryoshka_weights],
            logq_correction=logq_correction,
            max_in_batch_negatives=max_in_batch_negatives,
            sketch_width=sketch_width,
            sketch_depth=sketch_depth,
            impl=impl,
            process_group=process_group,
        )

    @property
    def scale(self) -> float:
        """The current scale ``1 / temperature`` (a host read)."""
        return 1.0 / self.sampled_softmax.temperature

    @property
    def temperature(self) -> float:
        return self.sampled_softmax.temperature

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None) -> torch.Tensor:
        """Returns the scalar loss of one batch of tokenized columns (class docstring)."""
        return self.compute_loss_from_embeddings(_embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """Returns the loss of per-column embeddings ``[anchor (B, D), positive (B, D), negative_k (B, D)…]``."""
        if len(embeddings) < 2:
            raise ValueError(f"embeddings must hold at least 2 columns (anchor, positive), got {len(embeddings)}")
        query, pos, negs = embeddings[0], embeddings[1], list(embeddings[2:])
        # Hard negatives are shared by every row, as in MNRL: column-major, all of column 1 first.
        neg = torch.cat(negs) if negs else None
        return self.sampled_softmax(query, pos, neg, **self._ids(labels, len(embeddings), query.shape[0]))

    def _ids(self, labels: torch.Tensor | None, columns: int, rows: int) -> dict[str, torch.Tensor]:
        if labels is None or not self.id_masking:
            return {}
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (rows, columns):
            raise ValueError(
                f"labels must be None or the ids, an int64 tensor of shape ({rows}, {columns}) (one id per text "
                f"column; see add_id_labels), got {getattr(labels, 'dtype', type(labels).__name__)} "
                f"{tuple(getattr(labels, 'shape', ()))}"
            )
        ids = {"query_ids": labels[:, 0].contiguous(), "pos_ids": labels[:, 1].contiguous()}
        if columns > 2:
            ids["neg_ids"] = labels[:, 2:].T.reshape(-1)
        return ids

    def get_config_dict(self) -> dict[str, Any]:
        """The options sentence-transformers writes into the model card."""
        inner = self.sampled_softmax
        return {
            "scale": self.scale,
            "learn_scale": inner.learn_temperature,
            "matryoshka_dims": inner.dims,
            "matryoshka_weights": inner.dim_weights,
            "hard_negatives": self.hard_negatives,
            "id_masking": self.id_masking,
            "logq_correction": inner.logq_correction,
            "max_in_batch_negatives": inner.max_in_batch_negatives,
        }

    @property
    def citation(self) -> str:
        return """
@inproceedings{agarwal2024omnisearchsage,
    title={OmniSearchSage: Multi-Task Multi-Entity Embeddings for Pinterest Search},
    author={Prabhat Agarwal and Minhazul Islam Sk and Nikil Pancha and Kurchi Subhra Hazra and Jiajing Xu and Chuck Rosenberg},
    booktitle={Companion Proceedings of the ACM Web Conference 2024},
    year={2024},
}
"""
