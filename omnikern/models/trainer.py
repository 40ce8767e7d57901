"""The training loop: optimiser, schedule, checkpoints and resume, NaN guard, ranks.

One step (``Trainer.step``):

1. this rank's sampler draws the task batches (for the recipe model, query → recipe with random
   negatives and query → query); ranks draw from disjoint shards of the data, as
   ``DistributedSampler`` does, with their own generator seeds;
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

Checkpoints (:mod:`omnikern.models.checkpoint`): ``<run>/step_<N>/``, written atomically, with
``latest.json`` naming the newest. Resuming restores the model, the optimiser, the schedule, the
counters and every RNG, so a resumed run continues exactly as an uninterrupted one would (same
parameters, bit for bit, on the same machine and world size).

What to train comes from outside: a *setup* function builds the model and the batch sampler for
this rank (:class:`TrainingSetup`; the recipe catalogue's is :func:`omnikern.recipe.recipe_setup`),
so the loop knows nothing of any dataset.

Scalars go to ``<run>/scalars.csv`` (step, loss, per-key losses, lr, temperature, grad norm, skipped
steps, seconds).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from omnikern.data.contract import TaskBatch
from omnikern.models.checkpoint import load_model_state, load_optimizer_state, read_checkpoint_meta, save_checkpoint
from omnikern.models.config import Config
from omnikern.models.loss import SampledSoftmaxLoss

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
# The trainer
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {name!r}")
    return torch.device(name)


def _to_device(batch: TaskBatch, device: torch.device) -> TaskBatch:
    def move(d):
        return {k: v.to(device, non_blocking=True) for k, v in d.items()}

    return TaskBatch(batch.candidate_type, move(batch.query), move(batch.candidates), batch.query_ids.to(device),
                     batch.candidate_ids.to(device), None if batch.weights is None else batch.weights.to(device))


@dataclass
class TrainingSetup:
    """What a setup function gives the :class:`Trainer` for one rank.

    Attributes:
        model: the container (``model(batches)`` returns an object with ``.total`` and ``.losses``).
        sampler: ``sample() -> list[TaskBatch]``, with its numpy generator as ``rng`` (saved and
            restored with checkpoints); already restricted to this rank's shard of the data.
        data: whatever the caller wants back from ``trainer.data`` (evaluation, export).
        warm: optional, called once after the model is on its device and in sync across ranks
            (e.g. to fill a frozen-layer cache).
    """

    model: nn.Module
    sampler: Any
    data: Any = None
    warm: Callable[[nn.Module], None] | None = None


class Trainer:
    """Trains the model a setup function builds from a :class:`Config` (module docstring).

    Args:
        config: the run's config.
        run_dir: where checkpoints, ``scalars.csv`` and ``latest.json`` go.
        setup: ``setup(config, rank, world) -> TrainingSetup``, called once the process group (if
            any) is up and with the resumed config when resuming.
        resume: a checkpoint or run directory to continue from (its config replaces ``config``
            except ``train.steps``, ``train.progress``, ``train.save_every``).
    """

    def __init__(self, config: Config, run_dir: str | Path, setup: Callable[[Config, int, int], TrainingSetup],
                 resume: str | Path | None = None) -> None:
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
        built = setup(config, self.rank, self.world)
        self.data, self.sampler = built.data, built.sampler
        self.model = built.model.to(self.device)
        if dist_ready():
            # Same initial weights everywhere (model init is seeded, but make it a fact).
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)
        # The first loss module's temperature is logged (the learned item key's, for the recipe model).
        self._losses = [m for m in self.model.modules() if isinstance(m, SampledSoftmaxLoss)]
        self.optimizer = build_optimizer(config, self.model)
        self.step_count = 0
        self.bad_steps = 0
        if built.warm is not None:
            built.warm(self.model)
        torch.manual_seed(config.train.seed + 1000 * self.rank + 1)
        if meta is not None:
            self._restore(ckpt, meta)
        self._set_lr()

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
        scalars["temperature"] = self._losses[0].temperature if self._losses else math.nan
        return scalars

    def train(self, stop_at: int | None = None) -> dict[str, float]:
        """Trains until ``train.steps`` optimiser steps (or ``stop_at``, earlier, as if interrupted
        there), checkpoints, and returns the last step's scalars."""
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
