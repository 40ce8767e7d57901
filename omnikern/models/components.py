"""The pieces every model recipe builds from: the encoder, its tokenizer, the text featurisers,
which encoder layers train, the frozen-layer cache, the cache directory, and the query tower as
served. Used by :mod:`omnikern.recipe` (the recipe catalogue) and :mod:`omnikern.catalogue` (any
dataset in the documented format).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from omnikern.models.config import Config
from omnikern.models.container import QUERY_KEY
from omnikern.models.encoders import QueryTower, load_encoder, minilm_path
from omnikern.text import WordPieceTokenizer

DEFAULT_CACHE = Path("~/.cache/omnikern")


def cache_dir(config: Config) -> Path:
    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir else DEFAULT_CACHE.expanduser()


def load_tokenizer(config: Config, max_length: int):
    """Returns the C++ WordPiece tokenizer of the encoder (MiniLM's ``tokenizer.json``)."""
    encoder = config.model.encoder
    root = minilm_path() if encoder in ("minilm", "tiny") else Path(encoder)
    path = root / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder {encoder!r}: no tokenizer.json in {root}")
    return WordPieceTokenizer.from_tokenizer_json(path, max_length=max_length)


def build_encoder(config: Config, vocab_size: int) -> nn.Module:
    """Returns the HF encoder named by ``model.encoder`` (``"tiny"``: random small BERT, seeded)."""
    encoder = config.model.encoder
    if encoder == "tiny":
        import transformers  # the data extra

        h = config.model.tiny_hidden
        bert = transformers.BertConfig(vocab_size=vocab_size, hidden_size=h, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=2 * h, max_position_embeddings=128)
        return transformers.BertModel(bert)  # with the pooler, as HF checkpoints (and the serving loader) have it
    return load_encoder(None if encoder == "minilm" else encoder)


def truncating(featurise, max_chars: int):
    """Returns ``featurise`` applied to each text cut at ``max_chars`` characters."""
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


def serving_query_tower(model: nn.Module) -> QueryTower:
    """Returns the trained query tower as a plain :class:`QueryTower` on the CPU (the frozen-layer
    cache wrapper removed), ready for :func:`~omnikern.models.checkpoint.save_query_tower`."""
    tower = model.tower(QUERY_KEY)
    encoder = getattr(tower.encoder, "inner", tower.encoder)  # unwrap CachedPrefixEncoder
    plain = QueryTower(encoder, tokenizer=tower.tokenizer, pooling=tower.pooling_name, output_dim=tower.output_dim,
                       output_dtype=tower.output_dtype, normalize_pooled=tower.normalize_pooled)
    plain.proj.load_state_dict(tower.proj.state_dict())
    return plain.cpu().eval()


@torch.no_grad()
def warm_frozen_cache(model: nn.Module, texts: Sequence[str], chunk: int = 512, progress: bool = False) -> None:
    """Fills the query tower's frozen-layer cache (a :class:`~omnikern.models.frozen.CachedPrefixEncoder`)
    with every training query once, in big batches rather than one sampled batch at a time; does
    nothing when the encoder has no cache."""
    tower = model.tower(QUERY_KEY)
    if not hasattr(tower.encoder, "cache"):
        return
    for start in tqdm(range(0, len(texts), chunk), desc="caching frozen layers", unit="batch", disable=not progress):
        tower.encoder(**tower.tokenize(texts[start:start + chunk]))
