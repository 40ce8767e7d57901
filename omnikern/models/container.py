"""The multi-tower container: every tower by key, and the loss summed over candidate keys.

Entities (search queries, pins, products — here recipes as "items") are embedded by *towers*; a
tower is addressed by a key ``(entity type, tower name)``: ``("query", "learned")``,
``("item", "learned")``, ``("item", "fixed")`` ... Every tower returns L2-normalised rows.

Container (:class:`OmniSearchSage`)
    For each task batch (B queries, B positives then R random negatives of one candidate entity
    type) it computes the query embeddings and, for every tower of the candidate type, the
    candidate embeddings; batches are grouped by candidate key. For each key it calls the injected
    loss once, ``loss(query, pos, neg, query_ids=, pos_ids=, neg_ids=, weights=)``, which sums over
    the Matryoshka prefixes ≤ its input dim. A candidate tower narrower than the query (the 256-d
    fixed towers) gets the query's first columns only, so fixed towers train the prefixes ≤ 256.
    ``total = Σ_keys loss(key) / #keys``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from omnikern.data.contract import TaskBatch

QUERY = "query"
LEARNED = "learned"
QUERY_KEY = (QUERY, LEARNED)


@dataclass
class ModelOutput:
    """What :meth:`OmniSearchSage.forward` returns.

    Attributes:
        total: scalar, the mean over candidate keys of each key's loss.
        losses: ``"<query>_<candidate type>_<tower>"`` → that key's scalar loss.
    """

    total: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


def _key_name(key: tuple[str, str]) -> str:
    return f"{key[0]}_{key[1]}"


class OmniSearchSage(nn.Module):
    """Every tower by key, and the summed loss over (query tower, candidate tower) keys.

    Args:
        towers: ``(entity type, tower name)`` → module. ``("query", "learned")`` is required: a
            module called as ``tower(**features)`` (a :class:`QueryTower`); the others are called as
            ``tower(features)`` with the batch's candidate feature dict.
        loss: module or callable ``loss(query, pos, neg=None, query_ids=None, pos_ids=None,
            neg_ids=None, weights=None)`` returning the scalar loss (e.g.
            ``omnikern.SampledSoftmaxLoss``); it sums its Matryoshka prefixes itself. A
            :class:`PerKeyLoss` is called with the candidate key first, to route it.
    """

    def __init__(self, towers: Mapping[tuple[str, str], nn.Module], loss: Callable[..., object]) -> None:
        super().__init__()
        if QUERY_KEY not in towers:
            raise ValueError(f"towers must include the query tower key {QUERY_KEY}, got {sorted(towers)}")
        for key in towers:
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) and k for k in key)
                    and "::" not in "".join(key)):
                raise ValueError(f"tower keys must be (entity type, tower name) string pairs, got {key!r}")
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        self.keys = tuple(sorted(towers))
        self.towers = nn.ModuleDict({f"{e}::{t}": towers[(e, t)] for e, t in self.keys})
        self.loss = loss

    def extra_repr(self) -> str:
        return f"keys={list(self.keys)}"

    def tower(self, key: tuple[str, str]) -> nn.Module:
        """Returns the tower at ``key``."""
        name = f"{key[0]}::{key[1]}"
        if name not in self.towers:
            raise KeyError(f"no tower {key!r}; towers are {list(self.keys)}")
        return self.towers[name]

    def towers_of(self, entity_type: str) -> list[tuple[str, str]]:
        """Returns the keys of ``entity_type``'s towers, sorted."""
        return [k for k in self.keys if k[0] == entity_type]

    def embed(self, key: tuple[str, str], features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns the unit embeddings of one tower for a feature dict."""
        tower = self.tower(key)
        return tower(**features) if key == QUERY_KEY else tower(features)

    def compute_embeddings(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
        """Returns the query embeddings (B, D) and, for every tower of the candidate type, its
        candidate embeddings (B + R, D_key) by key (for a query→query task the key is the query
        tower's own)."""
        query = self.embed(QUERY_KEY, batch.query)
        return query, {key: self.embed(key, batch.candidates) for key in self.towers_of(batch.candidate_type)}

    def forward(self, batches: Sequence[TaskBatch]) -> ModelOutput:
        """Returns the training loss over every task batch and candidate key (class docstring).

        Raises:
            ValueError: no batch has a tower for its candidate type, or ids/rows disagree.
        """
        grouped: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
        for batch in batches:
            b = batch.num_pairs
            if batch.candidate_ids.shape[0] < b:
                raise ValueError(f"candidate_ids must hold B={b} positives then the negatives, got "
                                 f"{batch.candidate_ids.shape[0]} rows")
            if not self.towers_of(batch.candidate_type):
                raise ValueError(f"no tower for candidate_type {batch.candidate_type!r}; towers are {list(self.keys)}")
            query, candidates = self.compute_embeddings(batch)
            for key, cand in candidates.items():
                if cand.shape[0] != batch.candidate_ids.shape[0]:
                    raise ValueError(f"tower {key} gave {cand.shape[0]} rows for {batch.candidate_ids.shape[0]} "
                                     f"candidate_ids")
                if cand.shape[1] > query.shape[1]:
                    raise ValueError(f"tower {key} is wider ({cand.shape[1]}) than the query tower ({query.shape[1]})")
                group = grouped.setdefault(key, {n: [] for n in ("q", "pos", "neg", "qid", "pid", "nid", "w", "has_w")})
                # A narrower candidate tower (the 256-d fixed towers) meets the query's first columns,
                # so only the Matryoshka prefixes it can express are trained against it.
                group["q"].append(query[:, : cand.shape[1]])
                group["pos"].append(cand[:b])
                group["neg"].append(cand[b:])
                group["qid"].append(batch.query_ids)
                group["pid"].append(batch.candidate_ids[:b])
                group["nid"].append(batch.candidate_ids[b:])
                group["w"].append(batch.weights if batch.weights is not None
                                  else torch.ones(b, device=query.device, dtype=torch.float32))
                group["has_w"].append(batch.weights is not None)
        if not grouped:
            raise ValueError("batches must hold at least one task batch")
        losses = {}
        for key in sorted(grouped):
            g = grouped[key]
            neg = torch.cat(g["neg"])
            has_neg = neg.shape[0] > 0
            any_weights = any(g["has_w"])
            per_key = (key,) if isinstance(self.loss, PerKeyLoss) else ()
            losses[f"{QUERY}_{_key_name(key)}"] = self.loss(
                *per_key,
                torch.cat(g["q"]),
                torch.cat(g["pos"]),
                neg if has_neg else None,
                query_ids=torch.cat(g["qid"]),
                pos_ids=torch.cat(g["pid"]),
                neg_ids=torch.cat(g["nid"]) if has_neg else None,
                weights=torch.cat(g["w"]) if any_weights else None,
            )
        total = torch.stack([v.float() for v in losses.values()]).sum() / len(losses)
        return ModelOutput(total=total, losses=losses)


def fresh_ids(calls: torch.Tensor, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(query_ids, pos_ids)`` (rows,) that no other row or call shares, and advances
    ``calls`` (a buffer, so a resumed run continues the sequence): what id masking switched off
    gives the loss, so only each row's own positive column stays masked. The ids are negative, so
    they cannot collide with string hashes or the usual non-negative entity ids."""
    pos_ids = -(torch.arange(rows, device=device, dtype=torch.int64) + 1 + calls.to(device) * 2 * rows)
    calls += 1
    return pos_ids - rows, pos_ids


class PerKeyLoss(nn.Module):
    """One loss module per candidate key, so that each key has its own temperature and sketches
    (each key's logQ counts are its own, as the published per-key losses have).

    Args:
        losses: ``(entity type, tower name)`` -> loss module (e.g. ``SampledSoftmaxLoss``).
        id_masking: False gives every row's query and positive fresh ids (:func:`fresh_ids`).
    """

    def __init__(self, losses: Mapping[tuple[str, str], nn.Module], id_masking: bool = True) -> None:
        super().__init__()
        if not losses:
            raise ValueError("losses must name at least one candidate key")
        self.losses = nn.ModuleDict({f"{e}::{t}": loss for (e, t), loss in sorted(losses.items())})
        self.id_masking = id_masking
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, key: tuple[str, str], query, pos, neg=None, *, query_ids, pos_ids, neg_ids=None, weights=None):
        name = f"{key[0]}::{key[1]}"
        if name not in self.losses:
            raise KeyError(f"no loss for candidate key {key!r}; keys are {list(self.losses)}")
        if not self.id_masking:
            query_ids, pos_ids = fresh_ids(self.calls, query.shape[0], pos_ids.device)
        return self.losses[name](query, pos, neg, query_ids=query_ids, pos_ids=pos_ids, neg_ids=neg_ids,
                                 weights=weights)
