"""Training the recipe OmniSearchSage: data and model set-up, the loop, checkpoints, resume, ranks.

One step (``Trainer.step``):

1. the :class:`~omnikern.data.batches.MultiTaskSampler` of this rank draws the task batches
   (query → recipe with random negatives, query → query); ranks draw from disjoint shards of the
   training positives and pairs (``rank::world``, as ``DistributedSampler`` does) with generator
   seed ``seed + 1000·rank``;
2. forward under bf16 autocast when on CUDA (``train.bf16``), the container sums the loss over
   keys; positives and negatives are all-gathered inside the loss, with gradient;
3. backward, then every gradient is all-reduced and divided by the world size (the loss of the
   whole step is the mean of the ranks' losses; the gather's backward already sums the
   cross-rank terms), so every rank applies the same update;
4. NaN guard: if the loss or the gradient norm is not finite, the update is skipped (gradients
   dropped, the schedule does not advance) and counted; after ``optim.max_bad_steps`` skipped
   steps the run aborts with ``RuntimeError``. The decision uses all-reduced values, so ranks agree;
5. gradient clipping to ``optim.clip_norm`` (global norm), optimiser step, schedule step:
   linear warm-up from 0 over ``warmup_steps``, then cosine to ``min_lr_ratio · lr`` at ``steps``.

Checkpoints (:func:`save_checkpoint`): a directory ``step_<N>/`` holding ``config.json`` (the full
config, the step, counters, format name and version, the optimiser's param groups, the samplers'
generator states) and ``model.safetensors`` / ``optimizer.safetensors`` / ``rng.safetensors``.
It is written into a temporary directory next to it and moved into place with ``os.replace``, so
a crash leaves either the old checkpoint or the new one, never a partial one; ``latest.json`` in
the run directory names the newest (written the same way). Resuming restores the model, the
optimiser, the schedule, the counters and every RNG, so a resumed run continues exactly as an
uninterrupted one would (same parameters, bit for bit, on the same machine and world size).

Scalars go to ``<run>/scalars.csv`` (step, loss, per-key losses, lr, temperature, grad norm, skipped
steps, seconds).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from omnikern.models.config import Config

CHECKPOINT_FORMAT = "omnikern.checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_CACHE = Path("~/.cache/omnikern")


# ---------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """Returns ``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if not dist_ready():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def local_cuda_device() -> torch.device:
    """``cuda:LOCAL_RANK``, this process's GPU under ``torchrun`` (``cuda:0`` without ``LOCAL_RANK``).

    Raises:
        ValueError: ``LOCAL_RANK`` is not an int, or not below the number of visible GPUs.
    """
    raw = os.environ.get("LOCAL_RANK", "0")
    try:
        local_rank = int(raw)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an int, got {raw!r}") from None
    count = torch.cuda.device_count()
    if not 0 <= local_rank < count:
        raise ValueError(f"LOCAL_RANK must be in [0, {count}) (the visible CUDA devices), got {local_rank}")
    return torch.device("cuda", local_rank)


def init_distributed_from_env(device: torch.device) -> bool:
    """Initialises the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1):
    NCCL on CUDA, gloo on CPU. Returns True when a group was created here.

    On CUDA it first makes ``cuda:LOCAL_RANK`` the current device: NCCL binds its communicator to
    the current device, and so does every launch that names no device (Triton kernels, which the
    ops also guard, and any torch code allocating on plain ``"cuda"``). Left at its default, every
    rank would use GPU 0.
    """
    if dist_ready() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(local_cuda_device())
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


# ---------------------------------------------------------------------------------------------
# Data and model set-up
# ---------------------------------------------------------------------------------------------


@dataclass
class RecipeData:
    """Everything the model and the evaluation need about the catalogue.

    Attributes:
        recipes: the catalogue; queries: the train/eval query sets; legacy: frozen vectors
        (N, legacy_dim); features: the learned tower's per-recipe inputs; tokenizer: query
        WordPiece; featuriser_name: ``"ngram"`` or ``"wordpiece"``.
    """

    recipes: list
    queries: Any
    legacy: Any
    features: Any
    tokenizer: Any
    featuriser_name: str
    vocab_size: int


def cache_dir(config: Config) -> Path:
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir else DEFAULT_CACHE.expanduser()


def load_tokenizer(config: Config, max_length: int):
    """Returns the C++ WordPiece tokenizer of the encoder (MiniLM's ``tokenizer.json``)."""
    from omnikern.models.towers import minilm_path
    from omnikern.text import WordPieceTokenizer

    encoder = config.model.encoder
    root = minilm_path() if encoder in ("minilm", "tiny") else Path(encoder)
    path = root / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder {encoder!r}: no tokenizer.json in {root}")
    return WordPieceTokenizer.from_tokenizer_json(path, max_length=max_length)


def build_encoder(config: Config, vocab_size: int) -> nn.Module:
    """Returns the HF encoder named by ``model.encoder`` (``"tiny"``: random small BERT, seeded)."""
    from omnikern.models.towers import load_encoder

    encoder = config.model.encoder
    if encoder == "tiny":
        import transformers

        h = config.model.tiny_hidden
        bert = transformers.BertConfig(vocab_size=vocab_size, hidden_size=h, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=2 * h, max_position_embeddings=128)
        return transformers.BertModel(bert)  # with the pooler, as HF checkpoints (and the serving loader) have it
    return load_encoder(None if encoder == "minilm" else encoder)


def _truncating(featurise, max_chars: int):
    def run(texts: list[str]):
        return featurise([t[:max_chars] for t in texts])
    return run


def wordpiece_featuriser(tokenizer, max_tokens: int):
    """Returns ``texts -> {"input_ids" (N,), "offsets" (B,)}``: each text's WordPiece ids without
    [CLS]/[SEP], at most ``max_tokens``."""

    def featurise(texts: list[str]) -> dict[str, np.ndarray]:
        rows = [tokenizer.encode(t)[1:-1][:max_tokens] for t in texts]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
        return {"input_ids": ids, "offsets": np.cumsum(lengths) - lengths}

    return featurise


def build_data(config: Config, progress: bool = False) -> RecipeData:
    """Loads the catalogue, builds the query sets, the cached legacy vectors and the features.

    Raises:
        CatalogueNotInstalledError / FileNotFoundError: the data or encoder package is missing
            (the message names the pip command).
    """
    from omnikern.data import QueryConfig, build_query_sets, load_recipes
    from omnikern.data.batches import RecipeFeatures
    from omnikern.data.legacy import ZeroShotEncoder, ensure_legacy_vectors
    from omnikern.data.recipes import TEXT_FIELDS

    d = config.data
    recipes = load_recipes(d.catalogue, check_count=d.max_recipes is None) if d.catalogue else load_recipes(
        check_count=d.max_recipes is None)
    if d.max_recipes is not None:
        recipes = recipes[: d.max_recipes]
    queries = build_query_sets(recipes, QueryConfig(seed=d.query_seed, eval_fraction=d.eval_fraction))
    tokenizer = load_tokenizer(config, config.model.query_max_tokens)

    # Legacy vectors: computed once by the zero-shot encoder, cached by encoder, size and catalogue.
    tag = "tiny" if config.model.encoder == "tiny" else Path(config.model.encoder).name
    ids_key = _catalogue_key(recipes)
    path = cache_dir(config) / f"legacy_{tag}_{d.legacy_dim}_{d.legacy_max_tokens}_{len(recipes)}_{ids_key}.safetensors"

    def encode(texts):
        torch.manual_seed(config.train.seed)
        encoder = build_encoder(config, len(tokenizer)).eval()
        doc_tok = load_tokenizer(config, d.legacy_max_tokens)
        return ZeroShotEncoder(encoder, doc_tok, batch_size=64, progress=progress)(texts)

    legacy = ensure_legacy_vectors(path, recipes, encode, dim=d.legacy_dim)

    name = config.model.featuriser
    if name not in ("auto", "ngram", "wordpiece"):
        raise ValueError(f"model.featuriser must be 'auto', 'ngram' or 'wordpiece', got {name!r}")
    ngram = None
    if name in ("auto", "ngram"):
        try:
            from omnikern.text import NGramFeaturizer, build_ngram_vocabs  # lands with the n-gram issue
            ngram = (NGramFeaturizer, build_ngram_vocabs)
        except ImportError:
            if name == "ngram":
                raise
    if ngram is not None:
        featurizer_cls, build_vocabs = ngram
        corpus = [recipes[i].text_fields()[f][: d.field_max_chars] for i in queries.train_recipes for f in TEXT_FIELDS]
        featurizer = featurizer_cls.from_vocabs(build_vocabs(corpus, caps=tuple(config.model.ngram_caps)))
        featurise, vocab_size, featuriser_name = featurizer.featurize, featurizer.vocab_size, "ngram"
    else:
        featurise = wordpiece_featuriser(load_tokenizer(config, None), d.field_max_tokens)
        vocab_size, featuriser_name = len(tokenizer), "wordpiece"
    features = RecipeFeatures(recipes, _truncating(featurise, d.field_max_chars), legacy.vectors)
    return RecipeData(recipes, queries, legacy, features, tokenizer, featuriser_name, int(vocab_size))


def _catalogue_key(recipes) -> str:
    import hashlib

    digest = hashlib.sha256(np.asarray([r.id for r in recipes], dtype=np.int64).tobytes())
    return digest.hexdigest()[:12]


class ContainerLoss(nn.Module):
    """Routes the container's loss calls to one :class:`~omnikern.models.loss.SampledSoftmaxLoss`
    per candidate key, and switches id masking off when asked.

    The container calls the loss once per candidate key in one forward. Each key gets its own
    :class:`SampledSoftmaxLoss` (own temperature and sketches, so each key's logQ totals are its
    own, as the published per-key losses have). Routing: a call without random negatives is the query →
    query task (``neg_mode="in_batch"``); with negatives, candidates of width ``learned_dim`` go
    to the learned item key, narrower ones to the fixed key.

    With ``id_masking=False`` each row's positive and query get fresh unique ids for the loss (the
    negatives keep theirs), so only a row's own positive column is masked and accidental
    duplicates count as negatives.
    """

    def __init__(self, learned: nn.Module, fixed: nn.Module, query: nn.Module, learned_dim: int,
                 id_masking: bool = True) -> None:
        super().__init__()
        self.learned, self.fixed, self.query = learned, fixed, query
        self.learned_dim = learned_dim
        self.id_masking = id_masking
        # A buffer, so that a resumed run continues the same fresh-id sequence.
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, query, pos, neg=None, *, query_ids, pos_ids, neg_ids=None, weights=None):
        if not self.id_masking:
            b = query.shape[0]
            # Negative ids cannot collide with string hashes (those are positive).
            pos_ids = -(torch.arange(b, device=pos_ids.device, dtype=torch.int64) + 1 + self.calls * 2 * b)
            query_ids = pos_ids - b
            self.calls += 1
        if neg is None:
            loss = self.query
        else:
            loss = self.learned if pos.shape[1] == self.learned_dim else self.fixed
        return loss(query, pos, neg, query_ids=query_ids, pos_ids=pos_ids, neg_ids=neg_ids, weights=weights)


def build_model(config: Config, data: RecipeData) -> nn.Module:
    """Returns the container (query tower, learned item tower, fixed tower) with the loss."""
    from omnikern.models.loss import SampledSoftmaxLoss
    from omnikern.models.towers import HashEmbeddingBag, QueryTower, build_recipe_model

    m, lc = config.model, config.loss
    torch.manual_seed(config.train.seed)
    encoder = build_encoder(config, len(data.tokenizer))
    if m.cache_frozen and m.train_encoder_layers >= 0:
        from omnikern.models.frozen import CachedPrefixEncoder

        encoder = CachedPrefixEncoder(encoder, m.train_encoder_layers)
    query = QueryTower(encoder, tokenizer=data.tokenizer, pooling=m.pooling, output_dim=m.output_dim,
                       normalize_pooled=m.legacy_init)
    if m.legacy_init:
        query.init_from_pca(data.legacy.mean, data.legacy.components)
    if not hasattr(encoder, "cache"):
        set_trainable_layers(query, m.train_encoder_layers)
    options = dict(temperature=lc.temperature, dims=lc.dims, dim_weights=lc.dim_weights,
                   logq_correction=lc.logq_correction, sketch_width=lc.sketch_width, impl=lc.impl)
    if config.data.legacy_dim >= m.output_dim:
        raise ValueError(f"data.legacy_dim ({config.data.legacy_dim}) must be below model.output_dim ({m.output_dim}): "
                         "the fixed tower trains a prefix of the query embedding")
    loss = ContainerLoss(SampledSoftmaxLoss(neg_mode=lc.neg_mode, **options),
                         SampledSoftmaxLoss(neg_mode=lc.neg_mode, **options),
                         SampledSoftmaxLoss(neg_mode="in_batch", **options), learned_dim=m.output_dim,
                         id_masking=lc.id_masking)
    bag = HashEmbeddingBag(num_buckets=m.hash_buckets, dim=m.text_dim, vocab_size=max(data.vocab_size, 1))
    model = build_recipe_model(query, loss, legacy_dim=config.data.legacy_dim,
                               bag=bag, hidden=tuple(m.item_hidden), output_dim=m.output_dim,
                               legacy_skip=m.legacy_init)
    return model


def set_trainable_layers(query_tower: nn.Module, layers: int) -> None:
    """Freezes the encoder except its top ``layers`` transformer layers (-1: nothing frozen)."""
    encoder = query_tower.encoder
    if layers < 0:
        encoder.requires_grad_(True)
        return
    encoder.requires_grad_(False)
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    if blocks is None:
        raise ValueError(f"model.train_encoder_layers={layers} needs a BERT-style encoder.layer list")
    for block in list(blocks)[len(blocks) - layers:] if layers else []:
        block.requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (or LAMB from ``torch-optimizer``) with two lr groups (encoder, rest) and no weight
    decay on biases, norms and the temperature.

    Raises:
        ValueError: unknown ``optim.optimizer``.
        ImportError: ``lamb`` without the ``torch-optimizer`` package.
    """
    o = config.optim
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_encoder = ".encoder." in f".{name}"
        no_decay = p.dim() < 2  # biases, LayerNorm gains, the temperature
        groups.setdefault((is_encoder, no_decay), []).append(p)
    param_groups = [
        {"params": params, "lr": o.encoder_lr if enc else o.lr, "weight_decay": 0.0 if nd else o.weight_decay}
        for (enc, nd), params in sorted(groups.items())
    ]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "lamb":
        try:
            import torch_optimizer
        except ImportError as error:
            raise ImportError("optim.optimizer='lamb' needs: pip install torch-optimizer") from error
        return torch_optimizer.Lamb(param_groups, lr=o.lr, weight_decay=o.weight_decay)
    raise ValueError(f"optim.optimizer must be 'adamw' or 'lamb', got {o.optimizer!r}")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Returns the lr multiplier at ``step``: ``step / warmup`` during warm-up, then
    ``min + (1 − min)·(1 + cos(π·progress))/2`` with progress from 0 at ``warmup`` to 1 at ``total``."""
    if warmup > 0 and step < warmup:
        return step / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _atomic_dir(target: Path, write) -> Path:
    """Runs ``write(tmp_dir)`` then moves ``tmp_dir`` to ``target`` with ``os.replace``; on any
    failure the temporary directory is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _atomic_json(path: Path, value: Any) -> None:
    from omnikern._atomic import write_text_atomic

    write_text_atomic(path, json.dumps(value, indent=1))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Splits the optimiser state into tensors (``"<param index>.<key>"``, for safetensors) and a
    JSON part (param groups, non-tensor state such as LAMB's integer step)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(run_dir: str | Path, step: int, config: Config, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None,
                    rng: dict[str, Any] | None = None) -> Path:
    """Writes ``<run_dir>/step_<step>/`` atomically (module docstring) and points ``latest.json``
    at it. Returns the checkpoint directory."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    model_tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(optimizer) if optimizer is not None else ({}, None)
    rng = dict(rng or {})
    rng_tensors = {k: v for k, v in rng.items() if isinstance(v, torch.Tensor)}
    rng_json = {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)}
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, "config": config.to_dict(),
            "optimizer": opt_meta, "rng": rng_json, "extra": extra or {},
            "torch": torch.__version__}

    def write(tmp: Path) -> None:
        save_file(model_tensors, str(tmp / "model.safetensors"))
        if optimizer is not None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        # config.json last: a directory with config.json is complete (and the rename makes it visible).
        (tmp / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    target = _atomic_dir(run_dir / f"step_{step:07d}", write)
    _atomic_json(run_dir / "latest.json", {"checkpoint": target.name, "step": step})
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """Returns the checkpoint directory for ``path``: a checkpoint itself, or a run directory
    (its ``latest.json``).

    Raises:
        FileNotFoundError: nothing there. ValueError: not an omnikern checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if (path / "latest.json").is_file() and not (path / "config.json").is_file():
        try:
            path = path / json.loads((path / "latest.json").read_text())["checkpoint"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"checkpoint {str(path)!r}: unreadable latest.json ({error})") from None
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ValueError(f"checkpoint {str(path)!r} is not an omnikern checkpoint (needs config.json and "
                         "model.safetensors)")
    return path


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Returns ``(checkpoint dir, config.json contents)`` after checking the format."""
    path = resolve_checkpoint(path)
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {str(path)!r}: config.json is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not an {CHECKPOINT_FORMAT} checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has version {meta.get('version')!r}, this omnikern reads "
                         f"{CHECKPOINT_VERSION}")
    return path, meta


def load_model_state(model: nn.Module, path: Path) -> None:
    """Loads ``model.safetensors`` into ``model``, strictly.

    Raises:
        ValueError: missing/unexpected keys or shape mismatches (named).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint {str(path)!r} does not fit this model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(tensors)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path, meta: dict[str, Any]) -> None:
    """Restores the optimiser state written by :func:`save_checkpoint`.

    Raises:
        ValueError: the checkpoint holds no optimiser state (it cannot be resumed, only evaluated),
            or the state does not fit this optimiser.
    """
    from safetensors.torch import load_file

    saved = meta.get("optimizer")
    if not saved or not (path / "optimizer.safetensors").is_file():
        raise ValueError(f"checkpoint {str(path)!r} holds no optimizer state: it can be evaluated, not resumed")
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in saved["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["groups"]})
    except (ValueError, KeyError) as error:
        raise ValueError(f"checkpoint {str(path)!r}: optimizer state does not fit ({error})") from None


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {name!r}")
    return torch.device(name)


def _to_device(batch, device: torch.device):
    from omnikern.models.towers import TaskBatch

    def move(d):
        return {k: v.to(device, non_blocking=True) for k, v in d.items()}

    return TaskBatch(batch.candidate_type, move(batch.query), move(batch.candidates), batch.query_ids.to(device),
                     batch.candidate_ids.to(device), None if batch.weights is None else batch.weights.to(device))


class Trainer:
    """Builds data, model and optimiser from a :class:`Config` and trains (module docstring).

    Args:
        config: the run's config.
        run_dir: where checkpoints, ``scalars.csv`` and ``latest.json`` go.
        data: prebuilt :class:`RecipeData` (shared between runs of one process); None builds it.
        resume: a checkpoint or run directory to continue from (its config replaces ``config``
            except ``train.steps``, ``train.progress``, ``train.save_every``).
    """

    def __init__(self, config: Config, run_dir: str | Path, data: RecipeData | None = None,
                 resume: str | Path | None = None) -> None:
        from omnikern.data.batches import MultiTaskSampler

        meta = None
        if resume is not None:
            ckpt, meta = read_checkpoint_meta(resume)
            saved = Config.from_dict(meta["config"])
            saved.train.steps, saved.train.progress = config.train.steps, config.train.progress
            saved.train.save_every = config.train.save_every
            config = saved
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.owns_group = init_distributed_from_env(self.device)
        self.rank, self.world = rank_and_world()
        if self.device.type == "cuda" and dist_ready():
            # Also when the group was created by the caller: this rank's GPU is the current device
            # (see init_distributed_from_env).
            self.device = local_cuda_device()
            torch.cuda.set_device(self.device)
        self.data = data if data is not None else build_data(config, progress=config.train.progress and self.rank == 0)
        self.model = build_model(config, self.data).to(self.device)
        if dist_ready():
            # Same initial weights everywhere (model init is seeded, but make it a fact).
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)
        self.optimizer = build_optimizer(config, self.model)
        t = config.train
        self.sampler = MultiTaskSampler(self.data.queries, self.data.features, self.data.tokenizer,
                                        num_pairs=t.num_pairs,
                                        task_weights={"item": t.item_weight, "query": t.query_weight},
                                        neg_ratio=t.neg_ratio, seed=t.seed + 1000 * self.rank)
        if self.world > 1:
            # DistributedSampler-style shard: rank r draws from rows r, r + world, ...
            self.sampler.positives = self.sampler.positives[self.rank::self.world]
            if len(self.sampler.pairs):
                self.sampler.pairs = self.sampler.pairs[self.rank::self.world]
        self.step_count = 0
        self.bad_steps = 0
        self._warm_cache()
        torch.manual_seed(t.seed + 1000 * self.rank + 1)
        if meta is not None:
            self._restore(ckpt, meta)
        self._set_lr()

    @torch.no_grad()
    def _warm_cache(self, chunk: int = 512) -> None:
        """Fills the frozen-layer cache with every training query once (big batches, not one
        sampled batch at a time)."""
        tower = self.model.tower(("query", "learned"))
        if not hasattr(tower.encoder, "cache"):
            return
        from tqdm.auto import tqdm

        texts = sorted({q.text for q in self.data.queries.train}, key=len)
        show = self.config.train.progress and self.rank == 0
        for start in tqdm(range(0, len(texts), chunk), desc="caching frozen layers", unit="batch", disable=not show):
            tower.encoder(**tower.tokenize(texts[start:start + chunk]))

    # -- state ---------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        local = {"sampler": self.sampler.rng.bit_generator.state, "torch": torch.get_rng_state()}
        if self.world == 1:
            return {"sampler.0": local["sampler"], "torch.0": local["torch"]}
        gathered = [None] * self.world
        dist.all_gather_object(gathered, local)
        out: dict[str, Any] = {}
        for r, state in enumerate(gathered):
            out[f"sampler.{r}"], out[f"torch.{r}"] = state["sampler"], state["torch"]
        return out

    def _restore(self, ckpt: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        saved_world = meta["extra"].get("world_size", 1)
        if saved_world != self.world:
            raise ValueError(f"checkpoint {str(ckpt)!r} was written by {saved_world} ranks, resuming with "
                             f"{self.world}: the samplers' shards would differ")
        load_model_state(self.model, ckpt)
        load_optimizer_state(self.optimizer, ckpt, meta)
        rng = load_file(str(ckpt / "rng.safetensors"))
        self.sampler.rng.bit_generator.state = meta["rng"][f"sampler.{self.rank}"]
        torch.set_rng_state(rng[f"torch.{self.rank}"])
        self.step_count = int(meta["step"])
        self.bad_steps = int(meta["extra"].get("bad_steps", 0))

    def save(self) -> Path | None:
        """Writes a checkpoint of the current step (rank 0 writes; every rank takes part)."""
        rng = self._rng_state()
        path = None
        if self.rank == 0:
            path = save_checkpoint(self.run_dir, self.step_count, self.config, self.model, self.optimizer,
                                   extra={"bad_steps": self.bad_steps, "world_size": self.world}, rng=rng)
        if dist_ready():
            dist.barrier()
        return path

    def _set_lr(self) -> None:
        o = self.config.optim
        factor = lr_factor(self.step_count, o.warmup_steps, self.config.train.steps, o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """Runs one optimisation step and returns its scalars (``skipped`` = 1 when the NaN guard
        dropped it)."""
        cfg = self.config
        self.model.train()
        batches = [_to_device(b, self.device) for b in self.sampler.sample()]
        use_bf16 = cfg.train.bf16 and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.model(batches)
        loss = out.total
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if dist_ready():
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else float("inf"))
        # The decision must be the same on every rank: the loss is reduced, the gradient already is.
        flag = torch.stack([loss.detach().float(), norm.float()]).to(self.device)
        if dist_ready():
            dist.all_reduce(flag)
        finite = bool(torch.isfinite(flag).all())
        if not finite:
            self.optimizer.zero_grad(set_to_none=False)
            self.bad_steps += 1
            if self.bad_steps > cfg.optim.max_bad_steps:
                raise RuntimeError(f"{self.bad_steps} non-finite steps (loss or gradient NaN/inf), more than "
                                   f"optim.max_bad_steps={cfg.optim.max_bad_steps}: aborting")
        else:
            self.optimizer.step()
            self.step_count += 1
            self._set_lr()
        scalars = {"loss": float(flag[0]) / self.world, "grad_norm": float(norm), "skipped": float(not finite),
                   "bad_steps": float(self.bad_steps), "lr": self.optimizer.param_groups[-1]["lr"]}
        for name, value in out.losses.items():
            scalars[f"loss/{name}"] = float(value.detach())
        scalars["temperature"] = self.model.loss.learned.temperature
        return scalars

    def train(self, stop_at: int | None = None) -> dict[str, float]:
        """Trains until ``train.steps`` optimiser steps (or ``stop_at``, earlier, as if interrupted
        there), checkpoints, and returns the last step's scalars."""
        from tqdm.auto import tqdm

        t = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        writer = None
        csv_file = None
        if self.rank == 0:
            csv_path = self.run_dir / "scalars.csv"
            csv_file = open(csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        bar = tqdm(total=t.steps, initial=self.step_count, desc="train", unit="step",
                   disable=not (t.progress and self.rank == 0))
        last: dict[str, float] = {}
        start = time.perf_counter()
        try:
            end = t.steps if stop_at is None else min(stop_at, t.steps)
            while self.step_count < end:
                last = self.step()
                bar.update(int(not last["skipped"]))
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if csv_file is not None and (self.step_count % max(t.log_every, 1) == 0 or last["skipped"]):
                    row = {"step": self.step_count, "seconds": round(time.perf_counter() - start, 3), **last}
                    if writer is None:
                        writer = csv.DictWriter(csv_file, fieldnames=list(row), extrasaction="ignore")
                        if csv_file.tell() == 0:
                            writer.writeheader()
                    writer.writerow(row)
                    csv_file.flush()
                if t.save_every and self.step_count % t.save_every == 0 and not last["skipped"]:
                    self.save()
            self.save()
        finally:
            bar.close()
            if csv_file is not None:
                csv_file.close()
        return last

    def close(self) -> None:
        if self.owns_group and dist_ready():
            dist.destroy_process_group()


def load_trained(path: str | Path, data: RecipeData | None = None, device: str = "cpu"):
    """Returns ``(model, config, data)`` from a checkpoint (or run directory) for evaluation.

    Raises:
        FileNotFoundError / ValueError: not a checkpoint, or it does not fit the model its config builds.
    """
    ckpt, meta = read_checkpoint_meta(path)
    config = Config.from_dict(meta["config"])
    data = data if data is not None else build_data(config)
    model = build_model(config, data)
    load_model_state(model, ckpt)
    return model.to(device).eval(), config, data


def export_for_serving(model: nn.Module, data: RecipeData, directory: str | Path) -> tuple[Path, Path]:
    """Writes what ``omnikern export-triton`` takes: ``<directory>/query_tower/`` (the query tower
    as :func:`omnikern.serve.export.save_query_tower` lays it out, with the cached-layer wrapper
    removed) and ``<directory>/item_index.safetensors`` (an :class:`omnikern.Int8Index` of the
    learned item tower's embeddings of every recipe, ids = recipe entity ids). Returns both paths.
    """
    from omnikern import Int8Index
    from omnikern.models.recipe_eval import item_embeddings
    from omnikern.models.towers import QUERY_KEY, QueryTower
    from omnikern.serve.export import save_query_tower

    directory = Path(directory)
    tower = model.tower(QUERY_KEY)
    encoder = getattr(tower.encoder, "inner", tower.encoder)  # unwrap CachedPrefixEncoder
    plain = QueryTower(encoder, tokenizer=tower.tokenizer, pooling=tower.pooling_name, output_dim=tower.output_dim,
                       output_dtype=tower.output_dtype, normalize_pooled=tower.normalize_pooled)
    plain.proj.load_state_dict(tower.proj.state_dict())
    tower_dir = save_query_tower(plain.cpu().eval(), directory / "query_tower")
    embeddings = item_embeddings(model, data)["learned"]
    index = Int8Index(embeddings.shape[1])
    index.add(embeddings.contiguous(), data.features.ids.clone())
    index_path = directory / "item_index.safetensors"
    index.save(index_path)
    return tower_dir, index_path
