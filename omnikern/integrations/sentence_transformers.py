"""omnikern inside sentence-transformers: the fused loss as a ``loss=``, and query towers that cross over.

The only omnikern module that imports ``sentence_transformers`` (extra ``omnikern[st]``).
docs/sentence-transformers.md has the conventions, the parity tests and the bench.

* :class:`SampledSoftmaxRankingLoss` is what ``SentenceTransformerTrainer(loss=...)`` takes:
  columns (anchor, positive, negative_1, …, negative_n) like ``MultipleNegativesRankingLoss``
  (MNRL), computed by :class:`omnikern.SampledSoftmaxLoss` in one fused pass (Matryoshka dims
  included, no B × N logits held), with optional learned temperature, id masking and logQ
  correction from ids carried in the dataset's ``label`` column (:func:`add_id_labels`).
* :func:`query_tower_from_sentence_transformer` reads a local sentence-transformers model
  (Transformer → mean/CLS Pooling → optional Dense → optional Normalize) as a
  :class:`~omnikern.models.encoders.QueryTower`; :func:`save_sentence_transformer` writes a query
  tower as a directory that ``SentenceTransformer(path)`` loads without omnikern.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.util import cos_sim
from torch import nn

from omnikern.models.checkpoint import check_wordpiece_tower
from omnikern.models.encoders import POOLINGS, QueryTower
from omnikern.models.loss import SampledSoftmaxLoss
from omnikern.text.wordpiece import WordPieceTokenizer

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


# ---- towers ----


def _pooling_mode(pooling) -> str:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):  # sentence-transformers < 6
        mode = pooling.get_pooling_mode_str()
    if isinstance(mode, (tuple, list)) and len(mode) == 1:
        mode = mode[0]
    if mode not in POOLINGS:
        raise ValueError(f"the model's pooling must be one of {sorted(POOLINGS)}, got {mode!r}")
    return mode


def query_tower_from_sentence_transformer(path: str | os.PathLike, max_length: int | None = None) -> QueryTower:
    """Returns a local sentence-transformers model directory as an omnikern QueryTower (eval, CPU).

    Supported modules, in order: ``Transformer`` (a BERT-family encoder with a WordPiece
    ``tokenizer.json``), ``Pooling`` (mean or CLS), optionally ``Normalize``, optionally one
    ``Dense`` with identity activation, optionally ``Normalize``. The tower's projection is the
    Dense layer (identity without one); its output is always L2-normalised, so a model without a
    final ``Normalize`` gives the same directions, unit length. Read offline (``HF_HUB_OFFLINE``).

    Args:
        path: the model directory (``modules.json`` in it).
        max_length: tokens per text with [CLS] and [SEP]; None: the model's ``max_seq_length``.

    Raises:
        FileNotFoundError: no ``modules.json`` at ``path``.
        ValueError: a module or setting the tower cannot express.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a sentence-transformers model directory: no modules.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    normalize_pooled, dense = False, None
    rest = kinds[2:]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize", "Dense") for k in rest) or rest.count("Dense") > 1:
        raise ValueError(f"path: modules must be Transformer, Pooling, then Normalize/Dense (at most one Dense), got {kinds}")
    if "Dense" in rest:
        normalize_pooled = "Normalize" in rest[: rest.index("Dense")]
        dense = modules[2 + rest.index("Dense")]
        activation = getattr(dense, "activation_function", None)
        if not isinstance(activation, nn.Identity) or getattr(dense, "use_residual", False):
            raise ValueError(f"path: the Dense module must have an identity activation, got {activation!r}")
    transformer = modules[0]
    encoder = getattr(transformer, "model", None) or transformer.auto_model
    with tempfile.TemporaryDirectory() as tmp:
        transformer.tokenizer.save_pretrained(tmp)
        length = max_length if max_length is not None else transformer.max_seq_length
        tokenizer = WordPieceTokenizer.from_tokenizer_json(Path(tmp) / "tokenizer.json", max_length=length)
    hidden = encoder.config.hidden_size
    output_dim = dense.linear.out_features if dense is not None else hidden
    tower = QueryTower(encoder, tokenizer=tokenizer, pooling=_pooling_mode(modules[1]), output_dim=output_dim,
                       init="default", normalize_pooled=normalize_pooled)
    with torch.no_grad():
        if dense is not None:
            tower.proj.weight.copy_(dense.linear.weight)
            if dense.linear.bias is not None:
                tower.proj.bias.copy_(dense.linear.bias)
            else:
                tower.proj.bias.zero_()
        else:
            tower.proj.weight.copy_(torch.eye(hidden))
            tower.proj.bias.zero_()
    return tower.eval()


def _hf_tokenizer(tokenizer: WordPieceTokenizer):
    """A transformers BertTokenizerFast that tokenizes as ``tokenizer`` does."""
    import inspect

    from transformers import BertTokenizerFast

    state = tokenizer.__getstate__()
    o = state["options"]
    if o["normalization"] or not o["add_special_tokens"] or o["continuing_subword_prefix"] != "##":
        raise ValueError("tower.tokenizer: only plain BERT WordPiece options can be written for sentence-transformers, "
                         f"got normalization={o['normalization']}, add_special_tokens={o['add_special_tokens']}, "
                         f"continuing_subword_prefix={o['continuing_subword_prefix']!r}")
    vocab = {token: i for token, i in state["vocab"]}
    options = dict(do_lower_case=o["lowercase"], strip_accents=o["strip_accents"],
                   tokenize_chinese_chars=o["handle_chinese_chars"], unk_token=o["unk_token"],
                   cls_token=o["cls_token"], sep_token=o["sep_token"], pad_token=o["pad_token"])
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        return BertTokenizerFast(vocab=vocab, **options)
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - transformers 4
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
        return BertTokenizerFast(vocab_file=str(vocab_file), **options)


def save_sentence_transformer(tower: QueryTower, directory: str | os.PathLike) -> Path:
    """Writes ``tower`` as a sentence-transformers model directory and returns it.

    Modules: Transformer (the encoder and a BertTokenizerFast equal to the tower's WordPiece) →
    Pooling (the tower's mean/CLS) → [Normalize, with ``normalize_pooled``] → Dense (the
    projection, identity activation) → Normalize. ``SentenceTransformer(directory).encode(texts)``
    then gives the tower's ``encode(texts)`` (tested to 1e-5) without importing omnikern.

    Raises:
        TypeError: not a QueryTower, or its tokenizer is not a WordPieceTokenizer.
        ValueError: a callable pooling, an ``output_dtype`` cast (sentence-transformers has none),
            or tokenizer options BertTokenizerFast cannot express.
    """
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:  # pragma: no cover - sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    check_wordpiece_tower(tower)
    if tower.pooling_name not in POOLINGS:
        raise ValueError(f"tower pooling must be one of {sorted(POOLINGS)}, got {tower.pooling_name!r}")
    if tower.output_dtype is not None:
        raise ValueError(f"tower.output_dtype must be None (sentence-transformers has no cast), got {tower.output_dtype}")
    directory = Path(directory)
    max_length = tower.tokenizer.max_length
    with tempfile.TemporaryDirectory() as tmp:
        tower.encoder.save_pretrained(tmp)
        hf_tokenizer = _hf_tokenizer(tower.tokenizer)
        if max_length is not None:
            hf_tokenizer.model_max_length = max_length
        hf_tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=max_length)
        proj = tower.proj
        dense = Dense(proj.in_features, proj.out_features, bias=True, activation_function=nn.Identity(),
                      init_weight=proj.weight.detach().cpu().clone(), init_bias=proj.bias.detach().cpu().clone())
        modules = [transformer, Pooling(tower.hidden_size, tower.pooling_name)]
        modules += [Normalize()] if tower.normalize_pooled else []
        modules += [dense, Normalize()]
        SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    (directory / "omnikern.json").write_text(json.dumps({"written_by": "omnikern.integrations.sentence_transformers",
                                                         "output_dim": tower.output_dim}, indent=1), encoding="utf-8")
    return directory
