"""Checkpoints, in one place: training checkpoints (resume, evaluate) and query-tower directories (serve, encode).

No pickle anywhere: tensors go to safetensors files, everything else to JSON, and every directory
is written atomically (into a temporary directory beside it, then renamed into place).

**Training checkpoint** (:func:`save_checkpoint`): a directory ``<run>/step_<N>/`` holding
``config.json`` (the full config, the step, counters, format name and version, the optimiser's
param groups, the samplers' generator states) and ``model.safetensors`` /
``optimizer.safetensors`` / ``rng.safetensors``. A crash leaves either the old checkpoint or the
new one, never a partial one; ``<run>/latest.json`` names the newest (written the same way).

**Query-tower directory** (:func:`save_query_tower`, :func:`load_query_tower`, :func:`load`): what
serving and ``encode`` need, without the training state:

- ``query_tower.json``: ``{"format": "omnikern.QueryTower", "version": 1, "encoder_config": <the HF
  config dict>, "pooling": "mean"|"cls", "normalize_pooled": bool, "output_dim": int,
  "output_dtype": null|"float16"|..., "pad_id": int, "vocab_size": int, "max_tokens": int}``;
- ``query_tower.safetensors``: the tower's ``state_dict`` (encoder + projection);
- ``wordpiece.json``: the :class:`~omnikern.text.WordPieceTokenizer` (``WordPieceTokenizer.save``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from omnikern._atomic import write_bytes_atomic, write_dir_atomic, write_text_atomic
from omnikern.models.config import Config
from omnikern.models.encoders import POOLINGS, QueryTower
from omnikern.text.wordpiece import WordPieceTokenizer

CHECKPOINT_FORMAT = "omnikern.checkpoint"
CHECKPOINT_VERSION = 1
TOWER_FORMAT = "omnikern.QueryTower"
TOWER_VERSION = 1
TOWER_CONFIG_FILE = "query_tower.json"  # how to rebuild the QueryTower module, JSON
TOWER_WEIGHTS_FILE = "query_tower.safetensors"  # its state_dict
WORDPIECE_FILE = "wordpiece.json"  # WordPieceTokenizer.save output
QUERY_TOWER_DIR = "query_tower"  # where a training run keeps its exported query tower


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------


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

    target = write_dir_atomic(run_dir / f"step_{step:07d}", write)
    write_text_atomic(run_dir / "latest.json", json.dumps({"checkpoint": target.name, "step": step}, indent=1))
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
# Query-tower directories
# ---------------------------------------------------------------------------------------------


def check_wordpiece_tower(tower: object) -> None:
    """Raises ``TypeError`` unless ``tower`` is a :class:`QueryTower` whose tokenizer is a
    :class:`~omnikern.text.WordPieceTokenizer` (what every saved tower format needs)."""
    if not isinstance(tower, QueryTower):
        raise TypeError(f"tower must be a QueryTower, got {type(tower).__name__}")
    if not isinstance(tower.tokenizer, WordPieceTokenizer):
        raise TypeError(f"tower.tokenizer must be a WordPieceTokenizer, got {type(tower.tokenizer).__name__}")


def save_query_tower(tower, directory: str | os.PathLike) -> Path:
    """Writes ``tower`` (a :class:`~omnikern.models.encoders.QueryTower` whose ``tokenizer`` is a
    :class:`~omnikern.text.WordPieceTokenizer`) as a checkpoint directory (module docstring) and
    returns the directory.

    Raises:
        TypeError: ``tower`` is not a QueryTower, its tokenizer is not a WordPieceTokenizer, or its
            pooling is a callable (only "mean"/"cls" can be rebuilt from JSON).
    """
    check_wordpiece_tower(tower)
    if tower.pooling_name not in POOLINGS:
        raise TypeError(f"tower pooling must be one of {sorted(POOLINGS)} to be exported, got {tower.pooling_name!r}")
    directory = Path(directory)
    encoder_config = tower.encoder.config.to_dict()
    config = {
        "format": TOWER_FORMAT,
        "version": TOWER_VERSION,
        "encoder_config": encoder_config,
        "pooling": tower.pooling_name,
        "normalize_pooled": tower.normalize_pooled,
        "output_dim": tower.output_dim,
        "output_dtype": None if tower.output_dtype is None else str(tower.output_dtype).removeprefix("torch."),
        "pad_id": tower.tokenizer.pad_id,
        "vocab_size": int(encoder_config["vocab_size"]),
        "max_tokens": int(encoder_config.get("max_position_embeddings", 512)),
    }
    state = {name: t.detach().cpu().contiguous() for name, t in tower.state_dict().items()}
    write_bytes_atomic(directory / TOWER_WEIGHTS_FILE, save(state, metadata={"format": TOWER_FORMAT}))
    tower.tokenizer.save(directory / WORDPIECE_FILE)
    write_text_atomic(directory / TOWER_CONFIG_FILE, json.dumps(config, indent=1, sort_keys=True))
    return directory


def read_query_tower_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Returns the checked ``query_tower.json`` of a tower directory (module docstring).

    Raises:
        FileNotFoundError: a checkpoint file is missing.
        ValueError: not valid JSON, or the wrong format or version.
    """
    directory = Path(directory)
    if not (directory / TOWER_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"directory {str(directory)!r} is not a query-tower checkpoint: no {TOWER_CONFIG_FILE}")
    try:
        config = json.loads((directory / TOWER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{directory / TOWER_CONFIG_FILE} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != TOWER_FORMAT or config.get("version") != TOWER_VERSION:
        got = config if not isinstance(config, dict) else f"format={config.get('format')!r} version={config.get('version')!r}"
        raise ValueError(f"{directory / TOWER_CONFIG_FILE} is not a {TOWER_FORMAT} v{TOWER_VERSION} config, got {got}")
    return config


def load_query_tower(directory: str | os.PathLike, device: str | torch.device = "cpu") -> QueryTower:
    """Rebuilds a tower saved by :func:`save_query_tower`: the QueryTower in eval mode on
    ``device``, with its WordPiece tokenizer when ``wordpiece.json`` is present.

    Raises:
        FileNotFoundError: a checkpoint file is missing.
        ValueError: wrong format or version, or weights that do not match the config.
    """
    from transformers import AutoConfig, AutoModel

    directory = Path(directory)
    config = read_query_tower_config(directory)
    if not (directory / TOWER_WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"directory {str(directory)!r} is not a query-tower checkpoint: no {TOWER_WEIGHTS_FILE}")
    encoder_config = dict(config["encoder_config"])
    hf_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
    encoder = AutoModel.from_config(hf_config)
    tokenizer = WordPieceTokenizer.load(directory / WORDPIECE_FILE) if (directory / WORDPIECE_FILE).is_file() else None
    output_dtype = getattr(torch, config["output_dtype"]) if config.get("output_dtype") else None
    tower = QueryTower(encoder, tokenizer=tokenizer, pooling=config["pooling"], output_dim=int(config["output_dim"]),
                       init="default", output_dtype=output_dtype,
                       normalize_pooled=bool(config.get("normalize_pooled", False)))
    try:
        tower.load_state_dict(load_file(str(directory / TOWER_WEIGHTS_FILE)), strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights in {directory / TOWER_WEIGHTS_FILE} do not match its config: {error}") from None
    return tower.to(device).eval()


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> QueryTower:
    """Returns the query tower saved at ``path``, ready for ``.encode(texts)``: a query-tower
    directory (``query_tower.json``, as :func:`save_query_tower` writes it), or a directory that
    holds one as ``query_tower/`` (what ``omnikern train --out RUN`` writes into ``RUN``).

    Raises:
        FileNotFoundError: neither is at ``path`` (the message names both).
        ValueError: the tower files are there but wrong (see :func:`load_query_tower`).
    """
    path = Path(path)
    for candidate in (path, path / QUERY_TOWER_DIR):
        if (candidate / TOWER_CONFIG_FILE).is_file():
            return load_query_tower(candidate, device=device)
    raise FileNotFoundError(f"path {str(path)!r} holds no query tower: no {TOWER_CONFIG_FILE} in it or in "
                            f"{str(path / QUERY_TOWER_DIR)!r} (omnikern train writes one into its --out directory)")
