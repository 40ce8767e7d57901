"""Evaluation of a trained recipe model on the held-out queries, through ``omnikern.Int8Index``.

For each tower and prefix dim ``d`` the whole catalogue (3,129 recipes, train and eval alike) is
the index; queries are the eval split's (targets never seen as training positives; relevant train
recipes are filtered out of the ranking, see :mod:`omnikern.models.evaluate`):

* ``learned``: query embedding prefix ``d`` against the learned item tower's prefix ``d``, for
  ``d`` in {256, full};
* ``fixed``: query embedding prefix 256 against the frozen legacy vectors (compatibility: the
  published claim that new query embeddings work on old indexes);
* ``zero_shot`` (optional): the untrained encoder's pooled query vector projected by the legacy
  PCA (:meth:`omnikern.data.legacy.LegacyVectors.project`) against the legacy vectors — the
  zero-shot all-MiniLM-L6-v2 baseline at 256-d.

Each index is an :class:`omnikern.Int8Index` of the full-width unit rows, searched at prefix ``d``
(cosine of the dequantised prefixes) for ``k = 100 + max |ignore|`` results, and the metrics come
from :func:`~omnikern.models.evaluate.evaluate_topk`. The same queries are scored exactly
(:func:`~omnikern.models.evaluate.evaluate_exact`, float prefixes re-normalised) and the
agreement is reported: mean overlap of the int8 and exact top-10 lists, and the largest metric
difference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnikern._atomic import write_bytes_atomic, write_text_atomic
from omnikern.data.queries import KINDS
from omnikern.index import Int8Index
from omnikern.models.container import QUERY_KEY
from omnikern.models.encoders import ZeroShotEncoder
from omnikern.models.evaluate import evaluate_exact, evaluate_topk
from omnikern.ops.l2norm import l2_normalize

METRICS = ("recall@10", "recall@100", "mrr")


def check_index_dim(index, dim: int, what: str = "the model") -> None:
    """Raises ``ValueError`` when an index's width differs from the embedding width ``dim``."""
    if index.dim != dim:
        raise ValueError(f"index dim {index.dim} does not match {what}'s embedding dim {dim}: the index was built "
                         "for another model (rebuild it from this checkpoint)")


@torch.no_grad()
def item_embeddings(model: nn.Module, data, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Returns ``{"learned": (N, D), "fixed": (N, 256)}`` unit rows for every recipe, in catalogue order."""
    model.eval()
    learned = model.tower(("item", "learned"))
    device = next(learned.parameters()).device
    rows = []
    for start in range(0, len(data.recipes), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data.recipes)))
        feats = {k: v.to(device) for k, v in data.features.gather(idx).items()}
        rows.append(learned(feats).float().cpu())
    return {"learned": torch.cat(rows), "fixed": l2_normalize(data.legacy.vectors.float())}


@torch.no_grad()
def query_embeddings(model: nn.Module, queries, batch_size: int = 256) -> torch.Tensor:
    """Returns the query tower's unit embeddings (Q, D) of ``queries`` (``Query`` objects)."""
    model.eval()
    texts = [q.text for q in queries]
    return model.tower(QUERY_KEY).encode(texts, batch_size=batch_size, convert_to_tensor=True).float().cpu()


@torch.no_grad()
def zero_shot_query_embeddings(encoder: nn.Module, tokenizer, legacy, queries) -> torch.Tensor:
    """Returns the zero-shot pooled query vectors projected by the legacy PCA (Q, legacy_dim)."""
    raw = ZeroShotEncoder(encoder.eval(), tokenizer, batch_size=256)([q.text for q in queries])
    return legacy.project(raw)


def _prefix(x: torch.Tensor, d: int) -> torch.Tensor:
    return l2_normalize(x[:, :d].float())


def score_tower(query_emb: torch.Tensor, index_emb: torch.Tensor, queries, dims: list[int]) -> dict[str, Any]:
    """Returns ``{str(d): {"int8": metrics, "exact": metrics, "agreement": {...}}}`` for one tower."""
    # The index ids are catalogue positions, which is what the metrics take.
    n = index_emb.shape[0]
    index = Int8Index(index_emb.shape[1])
    index.add(index_emb.float().contiguous(), torch.arange(n, dtype=torch.int64))
    check_index_dim(index, query_emb.shape[1], "the query tower")
    k = min(n, 100 + max((len(q.ignore) for q in queries), default=0))
    out: dict[str, Any] = {}
    for d in dims:
        q = query_emb[:, :d].float().contiguous()
        _, found = index.search(q, k=k, dim=d if d < index_emb.shape[1] else None)
        top = found.numpy()
        int8 = evaluate_topk(top, queries)
        exact = evaluate_exact(_prefix(query_emb, d), _prefix(index_emb, d), queries)
        scores = _prefix(query_emb, d) @ _prefix(index_emb, d).T
        exact_top = scores.topk(10, dim=1).indices.numpy()
        overlap = np.mean([len(set(a[:10].tolist()) & set(b.tolist())) / 10 for a, b in zip(top, exact_top)])
        diff = max(abs(int8[g][m] - exact[g][m]) for g in exact for m in METRICS if m in exact[g])
        out[str(d)] = {"int8": int8, "exact": exact,
                       "agreement": {"top10_overlap": float(overlap), "max_metric_diff": float(diff)}}
    return out


def score_index(query_emb: torch.Tensor, index: Int8Index, entity_ids: torch.Tensor, queries) -> dict[str, Any]:
    """Returns ``{str(index.dim): {"int8": metrics}}``: ``index`` (a user's own, e.g. the one
    ``omnikern train`` exported, under entity ids) searched with the queries' first ``index.dim``
    columns. Its ids are mapped to catalogue positions through ``entity_ids`` (position i has id
    ``entity_ids[i]``); ids outside the catalogue count as misses.

    Raises:
        ValueError: the index is wider than the query embedding.
    """
    if index.dim > query_emb.shape[1]:
        raise ValueError(f"index dim {index.dim} is wider than the query tower's embedding ({query_emb.shape[1]})")
    k = min(max(len(index), 1), 100 + max((len(q.ignore) for q in queries), default=0))
    _, found = index.search(query_emb[:, :index.dim].float().contiguous(), k=k)
    position = {int(i): p for p, i in enumerate(entity_ids.tolist())}
    top = np.vectorize(lambda i: position.get(int(i), -1), otypes=[np.int64])(found.numpy())
    return {str(index.dim): {"int8": evaluate_topk(top, queries)}}


def evaluate_recipe_model(model: nn.Module, data, zero_shot: nn.Module | None = None,
                          split: str = "eval", index: Int8Index | None = None) -> dict[str, Any]:
    """Returns the results dict (module docstring): ``towers → dim → {int8, exact, agreement}``,
    plus query counts; with ``index``, also ``towers["index"]`` (:func:`score_index`)."""
    queries = list(data.queries.eval if split == "eval" else data.queries.train)
    items = item_embeddings(model, data)
    q = query_embeddings(model, queries)
    full = q.shape[1]
    legacy_dim = items["fixed"].shape[1]
    results: dict[str, Any] = {"split": split, "queries": {k: sum(x.kind == k for x in queries) for k in KINDS},
                               "towers": {}}
    results["towers"]["learned"] = score_tower(q, items["learned"], queries, sorted({min(256, full), full}))
    results["towers"]["fixed"] = score_tower(q[:, :legacy_dim], items["fixed"], queries, [legacy_dim])
    if zero_shot is not None:
        zq = zero_shot_query_embeddings(zero_shot, data.tokenizer, data.legacy, queries)
        results["towers"]["zero_shot"] = score_tower(zq, items["fixed"], queries, [legacy_dim])
    if index is not None:
        results["towers"]["index"] = score_index(q, index, data.features.ids, queries)
    return results


def summary_rows(results: dict[str, Any], source: str = "int8") -> list[tuple[str, str, dict[str, float]]]:
    """Returns ``(tower, dim, {kind/metric: value})`` rows from a results dict."""
    rows = []
    for tower, by_dim in results["towers"].items():
        for dim, value in by_dim.items():
            metrics = value.get(source)
            if metrics is None:  # a user's index has int8 results only
                continue
            rows.append((tower, dim, {f"{kind}/{m}": metrics.get(kind, {}).get(m, float("nan"))
                                      for kind in KINDS for m in METRICS}))
    return rows


def format_table(results: dict[str, Any]) -> str:
    """Returns a plain-text table: Recall@10 / Recall@100 / MRR per query kind, one row per (tower, dim)."""
    header = f"{'tower':<10}{'dim':>5}" + "".join(f"{k[:11] + ' R@10':>17}{'R@100':>7}{'MRR':>7}" for k in KINDS)
    lines = [header, "-" * len(header)]
    for tower, dim, m in summary_rows(results):
        cells = "".join(f"{m[f'{k}/recall@10']:>17.3f}{m[f'{k}/recall@100']:>7.3f}{m[f'{k}/mrr']:>7.3f}" for k in KINDS)
        lines.append(f"{tower:<10}{dim:>5}" + cells)
    counts = results.get("queries", {})
    lines.append("queries: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    agree = [(t, d, v["agreement"]) for t, by in results["towers"].items() for d, v in by.items() if "agreement" in v]
    lines.append("int8 vs exact: " + "; ".join(f"{t}@{d} top-10 overlap {a['top10_overlap']:.3f}, max metric diff "
                                                f"{a['max_metric_diff']:.3f}" for t, d, a in agree))
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Writes ``<name>.json`` and ``<name>.png`` (Recall@10 per kind and tower) atomically; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    write_text_atomic(json_path, json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(rows), 1)
    for i, (tower, dim, m) in enumerate(rows):
        xs = np.arange(len(KINDS)) + i * width
        ax.bar(xs, [m[f"{k}/recall@10"] for k in KINDS], width, label=f"{tower} @{dim}")
    ax.set_xticks(np.arange(len(KINDS)) + 0.4 - width / 2, KINDS)
    ax.set_ylabel("Recall@10 (held-out queries, Int8Index)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(png_path, buffer.getvalue())
    return json_path, png_path
