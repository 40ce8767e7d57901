"""omnikern.integrations.sentence_transformers: the fused loss against sentence-transformers' own
losses on the same embeddings and the same tiny model, a short SentenceTransformerTrainer run, and
query towers crossing over in both directions. Everything offline: the tiny BERT and its WordPiece
vocabulary are written by the fixtures."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import assert_close_verbose  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.util import dot_score  # noqa: E402

from omnikern.integrations.sentence_transformers import SampledSoftmaxRankingLoss, add_id_labels  # noqa: E402
from omnikern.ops.reference import sampled_softmax_loss_ref  # noqa: E402

try:  # sentence-transformers >= 6 moved the losses; the old path warns
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )
except ImportError:  # pragma: no cover - older sentence-transformers
    from sentence_transformers.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

WORDS = ("the a red blue green cat dog car house tree runs sleeps fast slow big small old new on under "
         "near over and with sky sea road city park").split()
TEXTS = [f"the {a} {b} {c}" for a, b, c in zip(WORDS[2:12], WORDS[5:15], WORDS[10:20])]
HIDDEN = 32


def write_tiny_bert(directory, seed: int = 0) -> None:
    """A 1-layer, 32-wide BERT and its WordPiece vocab: saved as a Hugging Face directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(directory)
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    else:  # pragma: no cover - transformers 4
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bert")
    write_tiny_bert(directory)
    return directory


def tiny_st(bert_dir) -> SentenceTransformer:
    """Transformer → mean Pooling → Normalize, built from local files (no hub)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # pragma: no cover - sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(str(bert_dir), max_seq_length=16)
    return SentenceTransformer(modules=[transformer, Pooling(HIDDEN, "mean"), Normalize()], device="cpu")


def embeddings(B=13, D=32, negatives=0, seed=0, duplicate=False):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=gen)
    columns = [query, query + torch.randn(B, D, generator=gen)] + [torch.randn(B, D, generator=gen) for _ in range(negatives)]
    if duplicate:
        columns[1][5] = columns[1][2]
    return [c.clone().requires_grad_(True) for c in columns]


def loss_and_grads(compute, columns):
    loss = compute(columns)
    return loss.detach(), torch.autograd.grad(loss, columns)


def assert_same(got, want, what):
    (loss, grads), (want_loss, want_grads) = got, want
    assert_close_verbose(loss, want_loss, atol=0.0, rtol=1e-5, name=f"{what} loss")
    for k, (g, w) in enumerate(zip(grads, want_grads)):
        # rel 1e-5 of the column's largest gradient entry: tiny entries carry fp32 rounding
        assert_close_verbose(g, w, atol=1e-5 * float(w.abs().max()), rtol=1e-5, name=f"{what} grad of column {k}")


# ---- parity on the same embeddings ----


@pytest.mark.parametrize(
    "negatives, duplicate, impl",
    [(0, False, "auto"), (2, False, "auto"), (1, True, "torch")],  # auto: the Triton kernel (interpreter on CPU)
)
def test_equals_mnrl_on_the_same_embeddings(negatives, duplicate, impl):
    """Scale 20 fixed, one dim, no ids: loss and gradients equal MNRL's and CachedMNRL's (fp32,
    rel 1e-5), with and without hard negatives; a duplicated positive is a negative in both."""
    columns = embeddings(negatives=negatives, duplicate=duplicate)
    ours = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], impl=impl)
    mnrl = MultipleNegativesRankingLoss(None)
    got = loss_and_grads(lambda c: ours.compute_loss_from_embeddings(c, None), columns)
    want = loss_and_grads(lambda c: mnrl.compute_loss_from_embeddings(c, None), columns)
    assert_same(got, want, "MNRL")
    cached = CachedMultipleNegativesRankingLoss(tiny_st_placeholder(), mini_batch_size=4)
    want_cached = loss_and_grads(lambda c: cached.calculate_loss([[x] for x in c]), columns)
    assert_same(got, want_cached, "CachedMNRL")


def tiny_st_placeholder():
    """CachedMNRL only looks at its model's first module (StaticEmbedding or not) when the loss is
    computed from embeddings."""
    return torch.nn.Sequential(torch.nn.Identity())


def test_ids_mask_duplicates_that_mnrl_counts():
    """With ids in labels, a duplicate positive (same id) is masked: the loss is the reference's
    with those ids (joint softmax = mixed_concat), and lower than MNRL's, which counts it."""
    columns = embeddings(negatives=1, duplicate=True)
    ids = torch.arange(13 * 3).reshape(3, 13).T.contiguous()
    ids[5, 1] = ids[2, 1]
    ours = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], impl="torch")
    got = ours.compute_loss_from_embeddings(columns, ids)
    want, _ = sampled_softmax_loss_ref(columns[0], columns[1], columns[2], log_scale=torch.tensor(20.0).log(),
                                       query_ids=ids[:, 0], pos_ids=ids[:, 1], neg_ids=ids[:, 2], neg_mode="mixed_concat",
                                       dims=[32], dim_weights=[1.0])
    assert_close_verbose(got.detach(), want.detach(), atol=0.0, rtol=1e-5, name="loss")
    assert got < MultipleNegativesRankingLoss(None).compute_loss_from_embeddings(columns, None)
    # id_masking=False ignores them: MNRL again
    plain = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], id_masking=False, impl="torch")
    mnrl = MultipleNegativesRankingLoss(None).compute_loss_from_embeddings(columns, None)
    assert_close_verbose(plain.compute_loss_from_embeddings(columns, ids).detach(), mnrl.detach(), atol=0.0, rtol=1e-5)


def test_separate_hard_negative_softmax_is_the_published_sum():
    """hard_negatives="separate": CE over [pos | positives] + CE over [pos | hard negatives]."""
    columns = embeddings(negatives=1)
    ours = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], hard_negatives="separate", impl="torch")
    mnrl = MultipleNegativesRankingLoss(None)
    q, p, n = columns
    pos_only = mnrl.compute_loss_from_embeddings([q, p], None)
    scores = 20.0 * torch.nn.functional.cosine_similarity(q[:, None], torch.cat([p[:, None], n[None].expand(13, -1, -1)], 1), dim=-1)
    neg_only = torch.nn.functional.cross_entropy(scores, torch.zeros(13, dtype=torch.long))
    assert_close_verbose(ours.compute_loss_from_embeddings(columns, None).detach(), (pos_only + neg_only).detach(),
                         atol=0.0, rtol=1e-5)


# ---- parity through a model: MNRL and MatryoshkaLoss(MNRL) ----


def features_of(model, columns_of_texts):
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # tokenize before sentence-transformers 6
    return [preprocess(texts) for texts in columns_of_texts]


def model_grads(model, loss_fn, features):
    model.zero_grad()
    loss = loss_fn(features, None)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("dims, weights", [(None, None), ([32, 16, 8], [1.0, 0.5, 0.25])])
def test_equals_mnrl_and_matryoshka_through_the_model(bert_dir, dims, weights):
    """The same tiny model and batch (anchor, positive, negative): our loss and its parameter
    gradients equal MNRL's, and with dims those of MatryoshkaLoss(MNRL) with the same weights."""
    model = tiny_st(bert_dir)
    features = features_of(model, [TEXTS[:6], TEXTS[2:8], TEXTS[4:10]])
    mnrl = MultipleNegativesRankingLoss(model)
    reference = mnrl if dims is None else MatryoshkaLoss(model, mnrl, matryoshka_dims=dims, matryoshka_weights=weights)
    ours = SampledSoftmaxRankingLoss(model, matryoshka_dims=dims, matryoshka_weights=weights)
    got_loss, got = model_grads(model, ours, features)
    want_loss, want = model_grads(model, reference, features)
    assert_close_verbose(got_loss, want_loss, atol=0.0, rtol=1e-5, name="loss")
    assert len(got) == len(want) > 0
    # One scale for the whole gradient: some entries are 0 in exact arithmetic (the attention key
    # bias cancels in the softmax) and hold only fp32 noise (1e-11) in both losses.
    largest = max(float(w.abs().max()) for w in want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close_verbose(g, w, atol=1e-5 * largest, rtol=1e-5, name=f"parameter {k}")


# ---- SentenceTransformerTrainer ----


def train_losses(bert_dir, tmp_path, loss_factory, dataset, steps=3):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model = tiny_st(bert_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=steps, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=3, data_seed=3,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss_factory(model))
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row], model


def triplets(with_ids: bool = False):
    from datasets import Dataset

    n = 12
    data = {"anchor": TEXTS[:n] + TEXTS[: n - len(TEXTS)] if n > len(TEXTS) else TEXTS[:n],
            "positive": [t + " near the sea" for t in TEXTS[:n]],
            "negative": [t + " under the road" for t in reversed(TEXTS[:n])]}
    data = {k: v[:10] for k, v in data.items()}
    if with_ids:
        data.update(anchor_id=list(range(10)), positive_id=[100 + i % 4 for i in range(10)], negative_id=list(range(200, 210)))
    return Dataset.from_dict(data)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_trainer_runs_give_mnrl_losses(bert_dir, tmp_path):
    """Three SentenceTransformerTrainer steps with our loss give MNRL's losses (same batches, same
    model, no dropout). The weights are not compared: Adam's first steps move a parameter by about
    lr · sign(gradient), so a gradient entry near 0 that differs in the last bit flips its step."""
    ours, _ = train_losses(bert_dir, tmp_path, lambda m: SampledSoftmaxRankingLoss(m), triplets())
    theirs, _ = train_losses(bert_dir, tmp_path, lambda m: MultipleNegativesRankingLoss(m), triplets())
    assert len(ours) == len(theirs) == 3
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert ours[0] != ours[-1]  # it trained


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_trainer_with_id_columns_and_learned_scale(bert_dir, tmp_path):
    """Id columns moved into the label column feed id masking and logQ; a learned scale is a
    parameter the trainer's optimiser moves."""
    dataset = add_id_labels(triplets(with_ids=True), ["anchor_id", "positive_id", "negative_id"])
    assert dataset.column_names == ["anchor", "positive", "negative", "label"]
    holder = {}

    def factory(model):
        holder["loss"] = SampledSoftmaxRankingLoss(model, learn_scale=True, logq_correction=True, sketch_width=64)
        return holder["loss"]

    losses, _ = train_losses(bert_dir, tmp_path, factory, dataset, steps=2)
    inner = holder["loss"].sampled_softmax
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert int(inner.query_sketch.num_seen) == 8  # two batches of 4 anchors counted
    assert holder["loss"].scale != pytest.approx(20.0, rel=1e-7)  # the optimiser moved it


# ---- errors ----


def test_bad_options_and_inputs():
    columns = embeddings(negatives=1)
    with pytest.raises(ValueError, match="similarity_fct"):
        SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], similarity_fct=dot_score)
    with pytest.raises(ValueError, match="logq_correction=True needs id_masking"):
        SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], logq_correction=True, id_masking=False)
    with pytest.raises(ValueError, match="hard_negatives"):
        SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], hard_negatives="own")
    with pytest.raises(ValueError, match="matryoshka_dims is required"):
        SampledSoftmaxRankingLoss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scale"):
        SampledSoftmaxRankingLoss(None, scale=0.0, matryoshka_dims=[32])
    ours = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], impl="torch")
    with pytest.raises(ValueError, match=r"labels must be None or the ids, an int64 tensor of shape \(13, 3\)"):
        ours.compute_loss_from_embeddings(columns, torch.ones(13))
    with pytest.raises(ValueError, match="embeddings must hold at least 2"):
        ours.compute_loss_from_embeddings(columns[:1], None)
    logq = SampledSoftmaxRankingLoss(None, matryoshka_dims=[32], logq_correction=True, sketch_width=64, impl="torch")
    with pytest.raises(ValueError, match="query_ids and pos_ids are required with logq_correction"):
        logq.compute_loss_from_embeddings(columns, None)
    with pytest.raises(ValueError, match="id_columns"):
        add_id_labels(triplets(), ["anchor_id"])


# ---- towers that cross over ----

HARD_TEXTS = ["the red cat", "THE Blue  Dog runs", "a big old house near the sea and the park", "sleeps",
              "cats and dogs running under trees", "unknownword qq", ""]


def test_sentence_transformer_directory_loads_as_a_query_tower(bert_dir, tmp_path):
    """A sentence-transformers directory (Transformer, mean Pooling, Normalize) read as a
    QueryTower encodes as SentenceTransformer.encode does (1e-5), tokens included."""
    from omnikern.integrations.sentence_transformers import query_tower_from_sentence_transformer

    st_model = tiny_st(bert_dir)
    st_model.save(str(tmp_path / "st"))
    tower = query_tower_from_sentence_transformer(tmp_path / "st")
    assert tower.output_dim == HIDDEN and tower.pooling_name == "mean"
    want = st_model.encode(HARD_TEXTS, convert_to_numpy=True)
    got = tower.encode(HARD_TEXTS)
    assert got.shape == want.shape
    assert abs(got - want).max() < 1e-5
    with pytest.raises(FileNotFoundError, match="modules.json"):
        query_tower_from_sentence_transformer(tmp_path)


def test_query_tower_saved_for_sentence_transformers_loads_without_omnikern(bert_dir, tmp_path):
    """save_sentence_transformer → SentenceTransformer(path).encode in a fresh process that never
    imports omnikern, offline: the same vectors as the tower's encode (1e-5)."""
    import subprocess
    import sys

    import numpy as np
    from transformers import AutoModel

    from omnikern.integrations.sentence_transformers import save_sentence_transformer
    from omnikern.models.encoders import QueryTower
    from omnikern.text.wordpiece import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.from_tokenizer_json(bert_dir / "tokenizer.json", max_length=12)
    torch.manual_seed(0)
    tower = QueryTower(AutoModel.from_pretrained(str(bert_dir)), tokenizer=tokenizer, pooling="cls", output_dim=24,
                       init="default", normalize_pooled=True).eval()
    out = save_sentence_transformer(tower, tmp_path / "tower_st")
    np.save(tmp_path / "texts.npy", np.array(HARD_TEXTS, dtype=object), allow_pickle=True)
    script = (
        "import sys, numpy as np; from sentence_transformers import SentenceTransformer;"
        f"m = SentenceTransformer({str(out)!r}, device='cpu');"
        f"texts = list(np.load({str(tmp_path / 'texts.npy')!r}, allow_pickle=True));"
        f"np.save({str(tmp_path / 'st.npy')!r}, m.encode(texts, convert_to_numpy=True));"
        "assert not any(name.startswith('omnikern') for name in sys.modules), 'omnikern was imported'"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    want = tower.encode(HARD_TEXTS)
    got = np.load(tmp_path / "st.npy")
    assert got.shape == (len(HARD_TEXTS), 24)
    assert abs(got - want).max() < 1e-5
    # and back: the written directory reads as a tower again
    from omnikern.integrations.sentence_transformers import query_tower_from_sentence_transformer

    again = query_tower_from_sentence_transformer(out)
    assert again.normalize_pooled and again.pooling_name == "cls" and again.output_dim == 24
    assert abs(again.encode(HARD_TEXTS) - want).max() < 1e-5
    tower.output_dtype = torch.float16
    with pytest.raises(ValueError, match="output_dtype"):
        save_sentence_transformer(tower, tmp_path / "fp16")
