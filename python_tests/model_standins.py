"""Test stand-ins and small builders for the model tests: a plain in-batch loss, HF tokenizers behind
omnikern's tokenizer interface, a tiny random BERT, token batches, hash bags and a small item tower
with its features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnikern.models.item_towers import HashEmbeddingBag, LearnedItemTower


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


def tiny_bert(hidden: int = 32) -> nn.Module:
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=2 * hidden, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def token_batch(b: int = 3, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.int64)
    for i in range(b):
        mask[i, t - i:] = 0  # rows of different lengths
    return {"input_ids": ids * mask, "attention_mask": mask}


def bags(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=g)
    offsets = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()], dtype=torch.int64)
    return ids, offsets



def small_item_tower(**kwargs) -> LearnedItemTower:
    return LearnedItemTower(
        text_fields=("title", "body"),
        dense_features={"legacy": 6},
        visual_features={"visual": 16},
        hidden=(12, 10),
        output_dim=8,
        bag=HashEmbeddingBag(num_buckets=53, dim=4, vocab_size=30, seed=1),
        **kwargs,
    )


def small_item_features(b: int = 3, seed: int = 0, images: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(("title", "body")):
        lengths = torch.randint(0, 4, (b,), generator=g).tolist()
        out[f"{name}_input_ids"], out[f"{name}_offsets"] = bags(lengths, 30, seed + i)
    out["legacy"] = torch.randn(b, 6, generator=g)
    if images is None:
        out["visual"] = torch.randint(0, 256, (b, 2), generator=g, dtype=torch.uint8)
    else:
        out["visual"] = torch.randint(0, 256, (b, images, 2), generator=g, dtype=torch.uint8)
        out["visual_mask"] = torch.rand(b, images, generator=g) > 0.3
    return out

