"""Test stand-ins for components other issues deliver (the fused loss, the C++ WordPiece): small,
plain and only for tests of the model code."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class InBatchLossStandIn(nn.Module):
    """Test stand-in for the injected loss: in-batch + random negatives softmax, scale 10, no
    corrections. Records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, query, pos, neg=None, query_ids=None, pos_ids=None, neg_ids=None, weights=None):
        self.calls.append({"query": query, "pos": pos, "neg": neg, "query_ids": query_ids, "pos_ids": pos_ids,
                           "neg_ids": neg_ids, "weights": weights})
        cands = pos if neg is None else torch.cat([pos, neg])
        logits = 10.0 * query.float() @ cands.float().T
        return F.cross_entropy(logits, torch.arange(query.shape[0]))


class HFTokenizerStandIn:
    """HF ``tokenizers`` behind the ``encode_batch`` interface of omnikern's WordPiece (test only)."""

    def __init__(self, path, max_length: int = 64) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode_batch(self, texts):
        enc = self.tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
