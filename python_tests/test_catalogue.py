"""The multi-entity model on a dataset in the documented format (omnikern.catalogue, ``train/eval
--data``): batches, the model's towers, training, resume, evaluation, embedding, and bad input.

The dataset is the generated two-type shop (``helpers.shop_rows``: products with legacy vectors and
a dense price, boards without either, list-valued text fields, Zipf-skewed popularity, weights,
three tasks). The encoder is a random 2-layer BERT of width 32 (``model.encoder="tiny"``); only
the all-MiniLM-L6-v2 ``tokenizer.json`` is read from its package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import shop_rows, spawn_ranks, write_shop_dataset
from test_data_dataset import ENTITIES, PAIRS, _dataset, _replace

from omnikern.catalogue import (
    FIXED,
    build_catalogue_data,
    build_catalogue_model,
    catalogue_trainer,
    entity_documents,
    eval_queries,
    evaluate_catalogue,
    is_catalogue_run,
    iter_embeddings,
    load_catalogue_run,
    train_tasks,
    zero_shot_encoder,
)
from omnikern.cli import main
from omnikern.data.batches import PairSampler, split_pairs
from omnikern.models.config import load_config
from omnikern.models.container import LEARNED, QUERY_KEY
from omnikern.models.evaluate import bootstrap_interval, rank_metrics

TINY = [
    'model.encoder="tiny"', "model.tiny_hidden=32", "model.output_dim=32", "model.item_hidden=[32]",
    "model.hash_buckets=512", "model.text_dim=16", "model.train_encoder_layers=-1", "model.ngram_caps=[500,500,500]",
    "loss.sketch_width=1024", 'loss.impl="torch"', "train.num_pairs=48", "train.neg_ratio=2", "train.progress=false",
    "train.log_every=1", "train.threads=1", "optim.warmup_steps=0", "optim.lr=0.01", "optim.encoder_lr=0.001",
]


def tiny_config(data: Path, cache: Path, *extra: str):
    return load_config(None, TINY + [f'data.path="{data}"', f'data.cache_dir="{cache}"', *extra])


def cli_sets(data: Path, cache: Path, *extra: str) -> list[str]:
    out = ["--data", str(data), "--cache-dir", str(cache)]
    for item in TINY + list(extra):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    path, _ = write_shop_dataset(tmp_path_factory.mktemp("shop") / "data", row_group_rows=25)
    return path


@pytest.fixture(scope="module")
def legacy_shop(tmp_path_factory) -> Path:
    """The shop with legacy vectors on boards too (so training starts from them)."""
    rows = shop_rows()
    rng = np.random.default_rng(1)
    for entity in rows["entities"]:
        if entity["entity_type"] == "board":
            entity["legacy_embedding"] = [float(v) for v in rng.standard_normal(8).astype(np.float32)]
    path, _ = write_shop_dataset(tmp_path_factory.mktemp("legacy_shop") / "data", rows)
    return path


@pytest.fixture(scope="module")
def run(shop, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *cli_sets(shop, out.parent / "cache", "train.steps=6"), "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def test_split_pairs_is_proportional_and_exact():
    assert split_pairs(10, {"a": 1.0, "b": 1.0}) == {"a": 5, "b": 5}
    assert split_pairs(10, {"a": 2.0, "b": 1.0}) == {"a": 7, "b": 3}  # 6.67 / 3.33: the larger remainder first
    assert split_pairs(7, {"a": 0.0, "b": 3.0}) == {"a": 0, "b": 7}
    with pytest.raises(ValueError, match=r"num_pairs=3 leaves no pair per step for \['c'\]"):
        split_pairs(3, {"a": 10.0, "b": 10.0, "c": 1.0})


def test_pair_sampler_batches(shop, tmp_path):
    config = tiny_config(shop, tmp_path)
    data = build_catalogue_data(config)
    tasks, texts = train_tasks(data)
    assert {(t.task, t.candidate_type) for t in tasks} == {("board", "board"), ("board_browse", "board"),
                                                            ("product_search", "product")}
    # Pairs are the dataset's kept train rows, pointing at the right entities.
    pairs = data.dataset.pairs("train")
    assert sum(len(t) for t in tasks) == len(pairs)
    product = next(t for t in tasks if t.task == "product_search")
    ids = data.features["product"].ids.numpy()[product.candidates]
    wanted = [e for e, task in zip(pairs.entity_id.tolist(), pairs.task) if task == "product_search"]
    assert ids.tolist() == wanted
    counts = {t.task: len(t) for t in tasks}
    sampler = PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, num_pairs=48,
                          neg_ratio=3, seed=0)
    batches = sampler.sample()
    shares = {b.candidate_type + str(b.num_pairs) for b in batches}
    expected = split_pairs(48, {f"{t}/{'product' if t == 'product_search' else 'board'}": float(n)
                                for t, n in counts.items()})
    assert sorted(b.num_pairs for b in batches) == sorted(expected.values()), shares
    for batch in batches:
        source = data.features[batch.candidate_type]
        assert batch.candidate_ids.shape[0] == 4 * batch.num_pairs  # positives + 3 negatives each
        assert set(batch.candidate_ids.tolist()) <= set(source.ids.tolist())  # negatives of the same type
        assert batch.weights is not None and set(batch.weights.tolist()) <= {0.5, 1.0, 2.0}
        assert batch.candidates["title_offsets"].shape == (4 * batch.num_pairs,)
    # Task weights: only the named tasks, in the given proportion.
    only = PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, num_pairs=10,
                       task_weights={"product_search": 1.0}, seed=0).sample()
    assert [(b.candidate_type, b.num_pairs) for b in only] == [("product", 10)]
    with pytest.raises(ValueError, match=r"task_weights names tasks with no training pairs: \['nope'\]"):
        PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, task_weights={"nope": 1.0})


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def test_towers_per_entity_type(shop, tmp_path):
    config = tiny_config(shop, tmp_path)
    data = build_catalogue_data(config)
    assert data.legacy_dim is None  # boards have no legacy vectors: start from the zero-shot encoder
    model = build_catalogue_model(config, data)
    assert set(model.keys) == {QUERY_KEY, ("board", LEARNED), ("product", LEARNED), ("product", FIXED)}
    product = model.tower(("product", LEARNED))
    assert product.text_fields == ("details", "tags", "title") or set(product.text_fields) == {"title", "tags", "details"}
    assert product.dense_features == {"legacy": 8, "dense": 1}
    assert model.tower(("board", LEARNED)).dense_features == {}
    # The price is standardised with the statistics of the catalogue.
    price = np.asarray(data.features["product"].dense["dense"], dtype=np.float64)
    assert abs(float(price.mean())) < 1e-5 and abs(float(price.std()) - 1) < 1e-4


def test_legacy_init_fits_the_query_prefix(legacy_shop, tmp_path):
    """With legacy vectors on every type that are a linear map of the encoder's pooled document
    vectors, the fitted query prefix reproduces them: step 0 retrieves as the legacy embedding."""
    config = tiny_config(legacy_shop, tmp_path)
    data = build_catalogue_data(config, fit_legacy=False)
    encode = zero_shot_encoder(config, data)
    docs = entity_documents({f: data.dataset.entities["product"].texts(f) for f in data.types["product"].text_fields})
    pooled = encode(docs)
    true_map = torch.randn(8, pooled.shape[1], generator=torch.Generator().manual_seed(0))
    legacy = pooled @ true_map.T + 0.5
    # Rewrite the products' legacy vectors as that map, boards likewise.
    rows = shop_rows()
    board_docs = entity_documents({f: data.dataset.entities["board"].texts(f) for f in data.types["board"].text_fields})
    board_legacy = encode(board_docs) @ true_map.T + 0.5
    by_id = {int(i): v for i, v in zip(data.features["product"].ids, legacy)}
    by_id |= {int(i): v for i, v in zip(data.features["board"].ids, board_legacy)}
    for entity in rows["entities"]:
        entity["legacy_embedding"] = [float(v) for v in by_id[entity["entity_id"]]]
    path, _ = write_shop_dataset(tmp_path / "mapped", rows)
    config = tiny_config(path, tmp_path, "model.legacy_fit_rows=80")
    data = build_catalogue_data(config)
    assert data.legacy_dim == 8
    weight, bias = data.legacy_fit
    fitted = pooled @ weight.T + bias
    assert torch.allclose(fitted, legacy, atol=0.05 * float(legacy.abs().max())), (fitted - legacy).abs().max()
    model = build_catalogue_model(config, data)
    # The learned towers start as their legacy vectors (normalised, zero-padded).
    with torch.no_grad():
        start = model.tower(("product", LEARNED))(data.features["product"].gather(np.arange(4)))
    expected = torch.nn.functional.normalize(legacy[:4].float(), dim=1)
    assert torch.allclose(start[:, :8], expected, atol=1e-5) and float(start[:, 8:].abs().max()) == 0


# ---------------------------------------------------------------------------------------------
# Training, resume, evaluation, embedding
# ---------------------------------------------------------------------------------------------


def test_train_writes_a_run(run):
    assert is_catalogue_run(run)
    spec = json.loads((run / "catalogue.json").read_text())
    assert sorted(spec["types"]) == ["board", "product"] and spec["types"]["board"]["legacy_dim"] is None
    assert (run / "query_tower" / "query_tower.safetensors").is_file()
    lines = (run / "scalars.csv").read_text().splitlines()
    assert "loss/query_product_fixed" in lines[0] and len(lines) == 7


def test_killed_run_resumes_with_nothing_lost(shop, tmp_path):
    straight = catalogue_trainer(tiny_config(shop, tmp_path, "train.steps=6"), tmp_path / "a")
    straight.train()
    first = catalogue_trainer(tiny_config(shop, tmp_path, "train.steps=6", "train.save_every=1"), tmp_path / "b")
    first.train(stop_at=3)  # as if killed after the checkpoint of step 3
    resumed = catalogue_trainer(tiny_config(shop, tmp_path, "train.steps=6"), tmp_path / "b", resume=tmp_path / "b")
    assert resumed.step_count == 3
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_eval_json(run, shop, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", str(run), "--data", str(shop), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    tasks = results["tasks"]
    assert set(tasks) == {"board", "board_browse", "product_search"}
    product = tasks["product_search"]
    assert set(product) >= {"queries", "trained", "fixed", "zero_shot"} and "fixed" not in tasks["board"]
    gain = product["trained_minus_zero_shot"]
    assert gain["recall@10"] == pytest.approx(product["trained"]["recall@10"] - product["zero_shot"]["recall@10"])
    assert gain["recall@10_ci"][0] <= gain["recall@10"] <= gain["recall@10_ci"][1]
    for name in ("trained", "fixed", "zero_shot"):
        m = product[name]
        for metric in ("recall@10", "recall@100", "mrr"):
            lo, hi = m[metric + "_ci"]
            assert 0 <= lo <= m[metric] <= hi <= 1
    assert "product_search" in capsys.readouterr().out
    # The numbers are those of the functions, recomputed here on the same model.
    model, config, data = load_catalogue_run(run)
    again = evaluate_catalogue(model, config, data, zero_shot=False)
    assert again["tasks"]["board"]["trained"]["recall@10"] == tasks["board"]["trained"]["recall@10"]


def test_rank_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    q, c = torch.randn(5, 4), torch.randn(30, 4)
    c[7] = c[3]  # a tie: counts against the relevant row
    relevant = [[3], [0, 1, 2], [29], [7, 3], [10]]
    got = rank_metrics(q, c, relevant, ks=(1, 10))
    scores = (q @ c.T).numpy()
    for i, rows in enumerate(relevant):
        ranks = [(scores[i] >= scores[i, r]).sum() for r in rows]
        assert got["mrr"][i] == pytest.approx(1 / min(ranks))
        assert got["recall@10"][i] == pytest.approx(np.mean([r <= 10 for r in ranks]))
    lo, hi = bootstrap_interval(rng.random(200))
    assert lo < 0.5 < hi and hi - lo < 0.15
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"relevant\[0\] must be a non-empty list"):
        rank_metrics(q, c, [[]] * 5)


def test_embed_every_entity(run, shop):
    model, _, data = load_catalogue_run(run)
    seen = {}
    for batch, vectors in iter_embeddings(model, data, batch_rows=16):
        assert vectors.shape == (len(batch), 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
        for i, v in zip(batch.ids.tolist(), vectors):
            seen[i] = v
    assert len(seen) == 80
    # The streamed embeddings are those of the in-memory tables.
    from omnikern.catalogue import entity_embeddings

    table = entity_embeddings(model, data.features["product"], "product").numpy()
    ids = data.features["product"].ids.tolist()
    assert np.allclose(np.stack([seen[i] for i in ids]), table, atol=1e-5)


def test_embed_streams_without_reading_whole_tables(run, tmp_path, monkeypatch):
    """`omnikern embed` reads the entities batch by batch: loading any whole entity table (what
    training and eval do for random access) would hold the catalogue in memory, so it fails here."""
    from omnikern.data.dataset import Dataset
    from omnikern.data.embeddings import read_embeddings

    model, _, data = load_catalogue_run(run)
    expected = {}
    for batch, vectors in iter_embeddings(model, data, batch_rows=16):
        expected.update(zip(batch.ids.tolist(), vectors))

    def refuse(self, entity_type):
        raise AssertionError(f"embed read the whole {entity_type!r} table")

    monkeypatch.setattr(Dataset, "_load_table", refuse)
    out = tmp_path / "emb"
    assert main(["embed", str(run), "--out", str(out), "--batch-rows", "16"]) == 0
    got = {i: v for ids, _, vectors in read_embeddings(out).iter_batches() for i, v in zip(ids.tolist(), vectors)}
    assert got.keys() == expected.keys()
    assert all(np.allclose(got[i], expected[i], atol=1e-6) for i in got)


def test_a_run_refuses_another_dataset(run, tmp_path, capsys):
    rows = shop_rows()
    for entity in rows["entities"]:
        entity.pop("price", None)
    path, _ = write_shop_dataset(tmp_path / "other", rows)
    assert main(["eval", str(run), "--data", str(path)]) == 2
    assert "entity type 'product': the dataset has dense [], the run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad input: each malformed dataset stops `omnikern train` before training, exit 2, one line
# ---------------------------------------------------------------------------------------------

BAD = {
    "missing column": (dict(entities=ENTITIES.drop_columns(["entity_type"])), "column 'entity_type'"),
    "wrong type": (dict(train=_replace(PAIRS, "entity_id", pa.array(["1", "2"]))), "column 'entity_id': expected int64"),
    "null id": (dict(entities=_replace(ENTITIES, "entity_id", pa.array([1, None, 3], pa.int64()))), "found null"),
    "duplicate id": (dict(entities=_replace(ENTITIES, "entity_id", pa.array([1, 2, 1], pa.int64()))),
                     "expected a unique id, found 1 again"),
    "unknown entity": (dict(eval=_replace(PAIRS, "entity_id", pa.array([2, 999], pa.int64()))), "found 999"),
    "empty split": (dict(eval=PAIRS.slice(0, 0)), "empty split"),
    "legacy length": (dict(entities=_replace(ENTITIES, "legacy_embedding", pa.array(
        [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5, 0.5]], pa.list_(pa.float32())))), "expected a vector of length 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_exits_2_before_training(case, tmp_path, capsys):
    tables, message = BAD[case]
    root = _dataset(tmp_path / "data", **tables)
    out = tmp_path / "run"
    assert main(["train", *cli_sets(root, tmp_path / "cache", "train.steps=1"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnikern train: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not (out / "latest.json").exists()


def test_too_few_pairs_per_step_is_a_clear_error(shop, tmp_path, capsys):
    assert main(["train", *cli_sets(shop, tmp_path, "train.num_pairs=4"), "--out", str(tmp_path / "r")]) == 2
    assert "leaves no pair per step" in capsys.readouterr().err


def test_filtered_ranking_leaves_out_known_train_positives(shop, tmp_path):
    data = build_catalogue_data(tiny_config(shop, tmp_path))
    tasks = eval_queries(data)
    train = data.dataset.pairs("train")
    known = {}
    for q, e, task in zip(train.query, train.entity_id.tolist(), train.task):
        known.setdefault((task, q), set()).add(e)
    checked = 0
    for task, held_out in tasks.items():
        ids = np.concatenate([data.features[t].ids.numpy() for t in held_out.types])
        for text, relevant, ignore in zip(held_out.texts, held_out.relevant, held_out.ignore):
            assert set(ids[ignore].tolist()) == known.get((task, text), set())
            checked += bool(ignore)
    assert checked > 5  # the shop repeats queries between splits
    unfiltered = eval_queries(data, filtered=False)
    assert all(not any(t.ignore) for t in unfiltered.values())
    # A left-out row ranks nowhere: with it gone, the target moves up.
    q, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]])
    assert rank_metrics(q, c, [[1]])["mrr"][0] == pytest.approx(1 / 3)
    assert rank_metrics(q, c, [[1]], ignore=[[0, 2]])["mrr"][0] == 1.0
    assert rank_metrics(q, c, [[1, 2]], ignore=[[2]])["mrr"][0] == 1.0  # a target is never left out


def test_negatives_from_positives_only(shop, tmp_path):
    data = build_catalogue_data(tiny_config(shop, tmp_path))
    tasks, texts = train_tasks(data)
    sampler = PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, num_pairs=48,
                          neg_ratio=5, negatives="positives")
    positives = {t.candidate_type: set() for t in tasks}
    for t in tasks:
        positives[t.candidate_type] |= set(data.features[t.candidate_type].ids[t.candidates].tolist())
    assert len(positives["product"]) < len(data.features["product"])  # some products were never engaged with
    for _ in range(5):
        for batch in sampler.sample():
            assert set(batch.candidate_ids.tolist()) <= positives[batch.candidate_type]
    with pytest.raises(ValueError, match="negatives must be 'all' or 'positives', got 'some'"):
        PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, negatives="some")


def test_data_shop_cli(tmp_path, capsys):
    assert main(["data", "shop", "--out", str(tmp_path / "s"), "--products", "30", "--boards", "10",
                 "--train-pairs", "100", "--eval-pairs", "20"]) == 0
    assert "product: 30 entities" in capsys.readouterr().out
    assert main(["data", "shop", "--out", str(tmp_path / "s")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "shop", "--out", str(tmp_path / "t"), "--products", "0"]) == 2
    assert "--products must be at least 1, got 0" in capsys.readouterr().err


def test_killed_process_resumes_from_its_last_checkpoint(shop, tmp_path):
    """A real SIGKILL mid-run: `omnikern train --resume RUN` continues from the last checkpoint and
    the run ends with every step logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = cli_sets(shop, tmp_path / "cache", "train.save_every=2", "train.steps=400")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "omnikern", "train", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        latest = run / "latest.json"
        if latest.is_file() and json.loads(latest.read_text()).get("step", 0) >= 4:
            break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    saved = json.loads((run / "latest.json").read_text())["step"]
    assert 4 <= saved < 400
    assert main(["train", *cli_sets(shop, tmp_path / "cache", "train.steps=" + str(saved + 4)),
                 "--resume", str(run), "--out", str(run)]) == 0
    assert json.loads((run / "latest.json").read_text())["step"] == saved + 4
    steps = [int(line.split(",")[0]) for line in (run / "scalars.csv").read_text().splitlines()[1:]]
    assert steps[-4:] == list(range(saved + 1, saved + 5))
    assert sorted(set(steps)) == list(range(1, saved + 5))  # every step logged, the killed tail redone


def test_sampler_shards_every_task_by_rank(shop, tmp_path):
    data = build_catalogue_data(tiny_config(shop, tmp_path))
    tasks, texts = train_tasks(data)
    halves = []
    for rank in range(2):
        sampler = PairSampler(tasks, texts, np.arange(len(texts)), data.features, data.tokenizer, num_pairs=48)
        sampler.shard(rank, 2)
        halves.append({t.task: t for t, _ in sampler.tasks})
    for t in tasks:
        a, b = halves[0][t.task], halves[1][t.task]
        assert len(a) + len(b) == len(t)
        assert np.array_equal(np.sort(np.concatenate([a.candidates, b.candidates])), np.sort(t.candidates))
    with pytest.raises(ValueError, match=r"rank must be in \[0, world=2\), got 2"):
        sampler.shard(2, 2)


def test_embed_and_index_build(run, shop, tmp_path, capsys, monkeypatch):
    """`embed` by two ranks (as torchrun would start them), a rank rerun alone, then `index build`:
    the index set holds every entity's learned embedding under its id."""
    from omnikern.data.embeddings import read_embeddings
    from omnikern.sharded_index import read_index_set

    emb = tmp_path / "emb"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["embed", str(run), "--out", str(emb), "--batch-rows", "16"]) == 0
    assert "waits for the other ranks" in capsys.readouterr().out and not (emb / "manifest.json").exists()
    monkeypatch.setenv("RANK", "0")
    assert main(["embed", str(run), "--out", str(emb), "--batch-rows", "16"]) == 0
    assert (emb / "manifest.json").is_file()
    # A rank whose part was lost is not complete: rerunning it alone rewrites it.
    first = sorted(emb.glob("rank-00001-part-*.parquet"))[0]
    first.unlink()
    monkeypatch.setenv("RANK", "1")
    assert main(["embed", str(run), "--out", str(emb), "--batch-rows", "16"]) == 0
    assert first.is_file()
    monkeypatch.setenv("RANK", "0")
    assert main(["embed", str(run), "--out", str(emb), "--batch-rows", "16"]) == 0
    assert "rank 0 of 2 is already complete" in capsys.readouterr().out
    embeddings = read_embeddings(emb)
    assert embeddings.count() == 80 and embeddings.entity_types == ["board", "product"]
    model, _, data = load_catalogue_run(run)
    expected = {}
    for batch, vectors in iter_embeddings(model, data):
        expected.update(zip(batch.ids.tolist(), vectors))
    for ids, _, vectors in embeddings.iter_batches():
        for i, v in zip(ids.tolist(), vectors):
            assert np.allclose(v, expected[i], atol=1e-5)

    index_dir = tmp_path / "index"
    assert main(["index", "build", str(emb), "--out", str(index_dir), "--shards", "2"]) == 0
    indexes = read_index_set(index_dir)
    assert sorted(indexes) == ["board", "product"] and len(indexes["product"]) == 60
    product_ids = sorted(i for i in expected if i < 5000)
    query = torch.from_numpy(np.stack([expected[product_ids[0]]]))
    _, found = indexes["product"].search(query, 1)
    assert found.item() == product_ids[0]
    # Bad input: an unknown type, a used --out, unfinished embeddings.
    assert main(["index", "build", str(emb), "--out", str(tmp_path / "x"), "--entity-type", "pin"]) == 2
    assert "entity types ['pin'] have no embeddings" in capsys.readouterr().err
    assert main(["index", "build", str(emb), "--out", str(index_dir)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    (emb / "manifest.json").unlink()
    assert main(["index", "build", str(emb), "--out", str(tmp_path / "y")]) == 2
    assert "not a finished embeddings directory" in capsys.readouterr().err


def test_eval_refuses_an_index_for_a_dataset_run(run, capsys):
    assert main(["eval", str(run), "--index", "x.safetensors"]) == 2
    assert "--index is for runs on the recipe catalogue" in capsys.readouterr().err


GLOO_WORKER = """
import sys
from pathlib import Path
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_catalogue import tiny_config
from omnikern.catalogue import catalogue_trainer
trainer = catalogue_trainer(tiny_config(Path({data!r}), Path({cache!r}), "train.steps=3"), Path({out!r}))
trainer.train()
state = {{k: v.contiguous() for k, v in trainer.model.state_dict().items()}}
save_file(state, {out!r} + f"/rank{{trainer.rank}}.safetensors")
print("pairs", trainer.rank, sum(len(t) for t, _ in trainer.sampler.tasks))
trainer.close()
"""


def test_two_gloo_ranks_train_on_a_dataset(shop, tmp_path):
    from safetensors.torch import load_file

    script = GLOO_WORKER.format(tests=str(Path(__file__).parent), data=str(shop), cache=str(tmp_path / "cache"),
                                out=str(tmp_path / "run"))
    outputs = spawn_ranks(script, 2)
    a, b = (load_file(str(tmp_path / "run" / f"rank{r}.safetensors")) for r in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pairs = sorted(int(line.split()[2]) for out in outputs for line in out.splitlines() if line.startswith("pairs"))
    assert sum(pairs) == 384 and pairs[1] - pairs[0] <= 3  # each rank its half of every task


# ---------------------------------------------------------------------------------------------
# Streaming: training reads the catalogue by row groups
# ---------------------------------------------------------------------------------------------


def test_training_features_are_spooled_and_equal_the_tables(shop, tmp_path):
    from omnikern.catalogue import type_features

    data = build_catalogue_data(tiny_config(shop, tmp_path), fit_legacy=False)
    for t in data.item_types:
        table = data.dataset.entities[t]
        texts = {f: table.texts(f) for f in data.types[t].text_fields}
        expected = type_features(data.types[t], table.ids, texts, table.legacy, table.dense, data.featurise)
        got = data.features[t]
        assert isinstance(next(iter(got.dense.values()), np.empty(0)), np.ndarray)  # mapped, not tensors
        a, b = expected.gather(np.arange(len(table))), got.gather(np.arange(len(table)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t
    assert list((tmp_path / "spool").iterdir()) == []  # the files are unlinked once mapped


def test_entity_rows_streams_the_rows_asked_for(shop, tmp_path):
    from omnikern.catalogue import _entity_rows

    config = tiny_config(shop, tmp_path)
    data = build_catalogue_data(config, fit_legacy=False)
    table = data.dataset.entities["product"]
    rows = np.array([0, 1, 24, 25, 26, 59])  # across row groups of 25
    texts, legacy = _entity_rows(data.dataset, "product", rows, ["title", "tags"])
    assert texts == {f: [table.texts(f)[i] for i in rows] for f in ("title", "tags")}
    assert np.array_equal(legacy, table.legacy[rows])
    texts, legacy = _entity_rows(data.dataset, "board", np.array([], dtype=np.int64), ["title"])
    assert texts == {"title": []} and legacy is None


def test_ngram_vocabularies_count_a_bounded_sample(shop, tmp_path):
    from omnikern.text import build_ngram_vocabs

    full = build_catalogue_data(tiny_config(shop, tmp_path), fit_legacy=False)
    tables = {t: full.dataset.entities[t] for t in full.item_types}
    corpus = [text for t in full.item_types for f in full.types[t].text_fields for text in tables[t].texts(f)]
    assert full.vocabs == build_ngram_vocabs(corpus, caps=(500, 500, 500))
    sampled = build_catalogue_data(tiny_config(shop, tmp_path, "model.ngram_vocab_rows=7"), fit_legacy=False)
    picks = {t: np.arange(7) * len(tables[t]) // 7 for t in full.item_types}
    corpus = [tables[t].texts(f)[i] for t in full.item_types for f in full.types[t].text_fields for i in picks[t]]
    assert sampled.vocabs == build_ngram_vocabs(corpus, caps=(500, 500, 500))
    assert sampled.vocabs != full.vocabs


def test_streamed_mean_and_std_match_numpy():
    from omnikern.catalogue import _streamed_mean_std

    rng = np.random.default_rng(0)
    values = 1e6 + rng.standard_normal((1000, 3)) * [1e-3, 1.0, 1e3]  # a large offset: the naive formula fails
    blocks = np.split(values, [1, 7, 400, 400, 999])
    mean, std = _streamed_mean_std(iter(blocks))
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-14)
    # Both are two-pass-accurate: relative error ~ eps · offset / std = 2e-16 · 1e9 for the first column.
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-6)
    naive = np.sqrt(np.maximum((values**2).mean(axis=0) - values.mean(axis=0) ** 2, 0))
    assert abs(naive[0] - values.std(axis=0)[0]) > 1e-2 * values.std(axis=0)[0]  # what the merge avoids


def test_training_never_reads_a_whole_entity_table(shop, legacy_shop, tmp_path, monkeypatch):
    """Training featurises by row groups into mapped files and samples the legacy fit and the
    vocabularies by streamed passes: loading a whole table (texts of every entity) fails here."""
    from omnikern.data.dataset import Dataset

    def refuse(self, entity_type):
        raise AssertionError(f"training read the whole {entity_type!r} table")

    monkeypatch.setattr(Dataset, "_load_table", refuse)
    catalogue_trainer(tiny_config(shop, tmp_path, "train.steps=2"), tmp_path / "a").train()
    # Starting from legacy vectors, fitted on a sample (fewer rows than entities).
    catalogue_trainer(tiny_config(legacy_shop, tmp_path, "train.steps=2", "model.legacy_fit_rows=20"),
                      tmp_path / "b").train()
