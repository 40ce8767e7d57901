"""An encoder whose frozen bottom layers are computed once per distinct text and cached.

When only the top ``k`` transformer layers of the query encoder learn (``model.train_encoder_layers
= k``), the states entering layer ``L − k`` depend on the token ids alone. :class:`CachedPrefixEncoder`
runs the frozen part (embeddings and layers ``0 … L−k−1``) without gradient and in eval mode (no
dropout), stores each row's states ``(T_i, H)`` under the bytes of its unpadded token ids, and on
later steps reads them back; only the top ``k`` layers run per step. On a 2-core CPU this is what
makes training with MiniLM take minutes: training queries repeat across steps.

Rows are computed in groups of equal length with no padding, so a row's cached states do not
depend on which other rows shared its batch, and a resumed run reads exactly the values an
uninterrupted one did. The cache is not part of ``state_dict`` (it is derived from the frozen
weights, which are).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


class CachedPrefixEncoder(nn.Module):
    """Wraps a transformers BERT-style model: ``forward(input_ids, attention_mask) -> (hidden,)``
    with ``hidden (B, T, H)`` equal (in eval mode) to ``encoder(...)[0]``.

    Args:
        encoder: a transformers BERT-family model (``embeddings``, ``encoder.layer``).
        trainable_layers: the top layers that run (and learn) on every call, ``0 ≤ k ≤ L``.
        max_entries: cached rows at most (the oldest are dropped past it).
    """

    def __init__(self, encoder: nn.Module, trainable_layers: int, max_entries: int = 200_000) -> None:
        super().__init__()
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        if layers is None or not hasattr(encoder, "embeddings"):
            raise TypeError(f"encoder must be a transformers BERT-style model, got {type(encoder).__name__}")
        if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= len(layers):
            raise ValueError(f"trainable_layers must be in [0, {len(layers)}], got {trainable_layers!r}")
        self.inner = encoder
        self.config = encoder.config
        self.trainable_layers = trainable_layers
        self.max_entries = max_entries
        self.cache: dict[bytes, torch.Tensor] = {}
        encoder.requires_grad_(False)
        for block in list(layers)[len(layers) - trainable_layers:] if trainable_layers else []:
            block.requires_grad_(True)

    def extra_repr(self) -> str:
        return f"trainable_layers={self.trainable_layers}, cached={len(self.cache)}"

    @torch.no_grad()
    def _frozen(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """States entering the first trainable layer for unpadded id rows, grouped by length."""
        was_training = self.inner.training
        self.inner.eval()
        out: list[torch.Tensor | None] = [None] * len(rows)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_length[row.shape[0]].append(i)
        depth = len(self.inner.encoder.layer) - self.trainable_layers
        for members in by_length.values():
            ids = torch.stack([rows[i] for i in members])
            result = self.inner(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
            states = result.hidden_states[depth]
            for j, i in enumerate(members):
                out[i] = states[j].clone()
        self.inner.train(was_training)
        return out  # type: ignore[return-value]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        lengths = attention_mask.sum(1).tolist()
        rows = [input_ids[i, :n] for i, n in enumerate(lengths)]
        keys = [row.cpu().numpy().tobytes() for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            for i, states in zip(missing, self._frozen([rows[i] for i in missing])):
                self.cache[keys[i]] = states
            while len(self.cache) > self.max_entries:
                self.cache.pop(next(iter(self.cache)))
        b, t = input_ids.shape
        hidden = input_ids.new_zeros((b, t, self.config.hidden_size), dtype=torch.float32)
        for i, key in enumerate(keys):
            hidden[i, : lengths[i]] = self.cache[key]
        if self.trainable_layers:
            mask = additive_attention_mask(attention_mask, hidden.dtype)
            for block in list(self.inner.encoder.layer)[-self.trainable_layers:]:
                hidden = block(hidden, attention_mask=mask)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
        return (hidden,)


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``(B, 1, 1, T)`` mask a BERT layer adds to its attention scores: 0 where a key is a real
    token, the dtype's most negative value where it is padding.

    Built here rather than through the model's own mask helpers: those are private and changed
    signature between transformers releases (5.25 broke ``_create_attention_masks``). Both the
    eager and the SDPA attention of BERT-family layers accept an additive float mask of this shape
    (it is what ``get_extended_attention_mask`` has always produced).
    """
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min
