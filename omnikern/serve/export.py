"""Export a query tower and an int8 index as a versioned NVIDIA Triton Inference Server model repository.

What :func:`export_triton` writes (names and shapes: :mod:`omnikern.serve.contract`)::

    out_dir/
      README.txt                     what runs where, the Python environment the models need
      tokenizer/config.pbtxt         python backend, KIND_CPU: text -> input_ids, attention_mask
      tokenizer/1/model.py           + wordpiece.json (vocab and options, JSON)
      query_encoder/config.pbtxt     python backend running torch (or onnxruntime): tokens -> embedding
      query_encoder/1/model.py       + query_tower.json (config) + query_tower.safetensors (weights),
                                     or + query_tower.onnx instead of the weights (encoder_runtime="onnx")
      scorer/config.pbtxt            python backend: embedding (+ k, entity_type) -> scores, ids, entity_types
      scorer/1/model.py              + index.safetensors (Int8Index.save), or index/: an index set
                                     (one index per entity type) or one sharded index
      omnisearch/config.pbtxt        ensemble: tokenizer -> query_encoder -> scorer (pipeline="ensemble"),
                                     or python backend: all three steps in one stub (pipeline="fused")
      omnisearch/1/model.py          (fused only) + the files of the three steps above
      encode/config.pbtxt            ensemble: tokenizer -> query_encoder

The fused ``omnisearch`` runs the same step code (:mod:`omnikern.serve.steps`) as the three models,
with the same inputs, outputs, limits and error responses; it saves the two hand-overs between
stub processes that each ensemble request pays. The three models and the ``encode`` ensemble are
written either way.

Every backend model has dynamic batching (one ``execute`` serves many requests: they are
concatenated, run once and split back, one response per request, a bad request answered with its
own INVALID_ARG error), a max batch size and an instance group (``KIND_CPU``, or ``KIND_GPU`` for
the encoder and scorer when exporting for a GPU; the tokenizer always runs on CPU).

A *query-tower checkpoint* (what ``--checkpoint`` names) is the directory
:func:`omnikern.models.checkpoint.save_query_tower` writes (``query_tower.json``,
``query_tower.safetensors``, ``wordpiece.json``; no pickle anywhere).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from omnikern import __version__
from omnikern._atomic import copy_file_atomic, write_text_atomic
from omnikern._checks import check_int
from omnikern.models.checkpoint import (
    TOWER_CONFIG_FILE,
    TOWER_WEIGHTS_FILE,
    WORDPIECE_FILE,
    load_query_tower,
    read_query_tower_config,
    save_query_tower,
)
from omnikern.serve import contract as C
from omnikern.serve.repository import (
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    write_model,
)

__all__ = ["export_triton"]

_MODEL_PY_DIR = Path(__file__).parent / "model_py"
_INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")


# ---------------------------------------------------------------------------------------------
# Repository
# ---------------------------------------------------------------------------------------------


def _ensemble_pbtxt(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], max_batch_size: int,
                    steps: Sequence[tuple[str, dict[str, str], dict[str, str]]]) -> str:
    """config.pbtxt of an ensemble; each step is (model, {its input: ensemble tensor}, {its output: ensemble tensor})."""
    # The tensor lines are those of a backend model; only the header and the scheduling differ.
    body = ModelConfig(name=name, inputs=inputs, outputs=outputs, max_batch_size=max_batch_size).to_pbtxt()
    tensor_lines = body.split("\n")[3:]
    tensor_lines = [line for line in tensor_lines if line and not line.startswith("instance_group")]
    lines = [f'name: "{name}"', 'platform: "ensemble"', f"max_batch_size: {max_batch_size}", *tensor_lines,
             "ensemble_scheduling {", "  step ["]
    rendered = []
    for model, input_map, output_map in steps:
        parts = [f'    {{ model_name: "{model}" model_version: -1']
        parts += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in input_map.items()]
        parts += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in output_map.items()]
        rendered.append("\n".join(parts) + " }")
    lines += [",\n".join(rendered), "  ]", "}"]
    return "\n".join(lines) + "\n"


def _readme(max_batch_size: int, instance_kind: str, k_default: int, max_k: int, dim: int, count: int,
            pad_to: int, torch_threads: int, encoder_runtime: str, pipeline: str,
            entity_types: Sequence[str] = (C.SINGLE_INDEX_TYPE,)) -> str:
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover - export needs it
        transformers_version = "?"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if encoder_runtime == "onnx":
        import onnxruntime

        runtime = f"onnxruntime {onnxruntime.__version__} CPU on {C.ENCODER_ONNX_FILE}"
        runtime_line = f"\n  - onnxruntime {onnxruntime.__version__} (or compatible, CPU build) for the encoder"
    else:
        runtime, runtime_line = "torch", ""
    return f"""omnikern Triton model repository (written by omnikern {__version__} export_triton)

Models
  tokenizer      python backend, KIND_CPU  text BYTES [B,1] -> input_ids, attention_mask INT64 [B,T]
  query_encoder  python backend, {instance_kind}  input_ids, attention_mask -> embedding FP32 [B,{dim}]
                 runtime: {runtime}
  scorer         python backend, {instance_kind}  embedding (+ optional k INT32 [B,1], entity_type BYTES [B,1])
                 -> scores FP32, ids INT64, entity_types BYTES [B,k]
                 int8 indexes of {count} rows in all, entity types {", ".join(entity_types)}; k default {k_default},
                 k in 1..{max_k}; without entity_type every type is searched and the results merged by score
  omnisearch     {"ensemble: tokenizer -> query_encoder -> scorer" if pipeline == "ensemble" else
                  f"python backend, {instance_kind}: tokenizer + query_encoder + scorer in one stub (fused)"}
                 text (+ k, entity_type) -> scores, ids, entity_types
  encode         ensemble: text -> embedding
  max batch size {max_batch_size} for every model; dynamic batching on every backend model.
  Queries are at most {pad_to} tokens (the tokenizer's max length); every row is padded to {pad_to} so that the dynamic
  batcher can merge requests (it only merges equal shapes); the encoder trims each batch back.
  Threads per encoder/scorer instance and for the tokenizer: {torch_threads or 'all cores'} (parameter
  "torch_threads"/"threads" in config.pbtxt).
  Limits: a text row longer than {C.MAX_TEXT_BYTES} bytes, k outside 1..{max_k}, a wrong dtype/shape or
  an empty batch get an INVALID_ARG error for that request only.

Python environment of the models (the python backend runs them in the interpreter whose stub it
starts; `omnikern serve` uses the one it runs in):
  - Python {python} (the stub must match: tritonserver from nvidia-pytriton ships stubs for 3.8-3.13,
    and LD_LIBRARY_PATH must hold that Python's libpython; `omnikern serve` sets it)
  - numpy < 2 (the python backend stub is built against numpy 1.x; numpy 2 breaks every response)
  - torch {torch.__version__.split('+')[0]} (or compatible), transformers {transformers_version}, safetensors{runtime_line}
  - omnikern {__version__} with its C++ extension (WordPiece) and omnikern.Int8Index
Install: pip install 'omnikern[serve,data]' (then torch for your device).

Serve: omnikern serve --model-repo <this directory>
Query: omnikern query "tomato soup" --url 127.0.0.1:<http port> --k 10
"""


def export_triton(
    query_tower_or_checkpoint,
    index_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_batch_size: int = 64,
    instance_kind: str = "KIND_CPU",
    instance_count: int = 1,
    k_default: int = 10,
    max_k: int = C.MAX_K,
    max_queue_delay_us: int = 100,
    torch_threads: int = 1,
    encoder_runtime: str = "auto",
    pipeline: str = "ensemble",
    index_class: str = "omnikern:Int8Index",
    version: int = 1,
    overwrite: bool = False,
) -> Path:
    """Writes the model repository described in the module docstring and returns ``out_dir``.

    Args:
        query_tower_or_checkpoint: a QueryTower with a WordPieceTokenizer, or a checkpoint directory
            (:func:`save_query_tower`).
        index_path: a file written by ``Int8Index.save``, or an index directory (an index set from
            ``omnikern index build``: one index per entity type; or one ``ShardedIndex``), whose
            dim is the tower's ``output_dim``.
        out_dir: the repository directory; must be absent or empty unless ``overwrite``.
        max_batch_size: the largest batch (rows) any model takes; clients chunk larger inputs.
        instance_kind: ``"KIND_CPU"`` or ``"KIND_GPU"`` (encoder and scorer on the GPU).
        instance_count: instances of the encoder and the scorer.
        k_default: results per query when a request leaves ``k`` out.
        max_k: the largest ``k`` a request may ask for.
        max_queue_delay_us: how long each dynamic batcher waits to fill a batch. Requests that
            queue while an instance is busy are batched anyway; the delay adds latency at each of
            the three steps under light load and gathers the bursts the encoder's batches release
            into the scorer under heavy load. Measured here (onnx encoder, means of 4-9 runs at
            concurrency 1 / 4 / 16): 0 µs 141 / 284 / 461 q/s, 100 µs (the default) 145 / 316 /
            491, 500 µs 104 / 321 / 505 q/s.
        torch_threads: intra-op threads of each encoder and scorer instance (CPU); 0 = torch's
            default (all cores). 1 is the default: several instances and stubs share the cores,
            and OpenMP threads that spin-wait on a busy machine made a 2-thread encoder 18x slower
            than a 1-thread one here (296 vs 16 ms per query on 2 loaded cores). For
            ``encoder_runtime="onnx"`` the onnxruntime session's intra-op threads.
        encoder_runtime: what runs the encoder: ``"torch"`` (the QueryTower from its safetensors
            weights), ``"onnx"`` (the tower exported once, here, to ``query_tower.onnx`` and run
            by onnxruntime on the CPU; needs ``onnx`` + ``onnxruntime``, and ``KIND_CPU``), or
            ``"auto"`` (the default): ``"onnx"`` for ``KIND_CPU``, ``"torch"`` for ``KIND_GPU``.
            On this 2-core CPU the onnx server was faster at every concurrency measured
            (README, ``bench/serve.py``).
        pipeline: how ``omnisearch`` runs: ``"ensemble"`` (Triton chains the tokenizer, encoder
            and scorer models, three python-backend stubs) or ``"fused"`` (one python-backend
            model running the three steps in one stub, with the tokenizer's, encoder's and
            scorer's files and parameters; same inputs, outputs and errors).
        index_class: ``"module:Class"`` the scorer loads the index with (``Class.load(path, device=)``).
        version: the version directory the models are written to.
        overwrite: replace the five models of an existing repository.

    Raises:
        ValueError: a bad option, a non-empty ``out_dir`` without ``overwrite``, an index whose dim
            differs from the tower's output, or ``k_default`` outside 1..max_k.
        FileNotFoundError: ``index_path`` or the checkpoint is missing.
        ImportError: ``encoder_runtime`` is onnx and ``onnx`` is not installed.
    """
    if instance_kind not in _INSTANCE_KINDS:
        raise ValueError(f"instance_kind must be one of {_INSTANCE_KINDS}, got {instance_kind!r}")
    if encoder_runtime not in ("auto", *C.ENCODER_RUNTIMES):
        raise ValueError(f"encoder_runtime must be one of {('auto', *C.ENCODER_RUNTIMES)}, got {encoder_runtime!r}")
    if pipeline not in C.PIPELINES:
        raise ValueError(f"pipeline must be one of {C.PIPELINES}, got {pipeline!r}")
    if encoder_runtime == "auto":
        encoder_runtime = "onnx" if instance_kind == "KIND_CPU" else "torch"
    if encoder_runtime == "onnx" and instance_kind != "KIND_CPU":
        raise ValueError(f"encoder_runtime 'onnx' runs on onnxruntime's CPU build: instance_kind must be KIND_CPU, "
                         f"got {instance_kind!r}")
    for name, value, low in (("max_batch_size", max_batch_size, 1), ("instance_count", instance_count, 1),
                             ("max_k", max_k, 1), ("max_queue_delay_us", max_queue_delay_us, 0),
                             ("torch_threads", torch_threads, 0), ("version", version, 1)):
        check_int(name, value, low)
    check_int("k_default", k_default, 1, max_k)
    if ":" not in index_class:
        raise ValueError(f"index_class must be 'module:Class', got {index_class!r}")
    index_path = Path(index_path)
    if not index_path.exists():
        raise FileNotFoundError(f"index_path {str(index_path)!r} is neither an Int8Index file nor an index directory")
    out_dir = Path(out_dir)
    models = (C.TOKENIZER, C.QUERY_ENCODER, C.SCORER, C.OMNISEARCH, C.ENCODE)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"out_dir {str(out_dir)!r} is not empty (pass overwrite=True to replace its models)")
        for name in models:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    # The tower: saved (or copied) into the encoder's version directory; its dims checked against the index.
    encoder_dir = out_dir / C.QUERY_ENCODER / str(version)
    if isinstance(query_tower_or_checkpoint, (str, os.PathLike)):
        checkpoint = Path(query_tower_or_checkpoint)
        for name in (TOWER_CONFIG_FILE, TOWER_WEIGHTS_FILE, WORDPIECE_FILE):
            if not (checkpoint / name).is_file():
                raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} has no {name} (see omnikern.models.checkpoint.save_query_tower)")
            copy_file_atomic(checkpoint / name, encoder_dir / name)
    else:
        save_query_tower(query_tower_or_checkpoint, encoder_dir)
    tower_config = read_query_tower_config(encoder_dir)
    dim = int(tower_config["output_dim"])
    shapes = _index_shapes(index_path)
    for entity_type, (index_dim, _) in shapes.items():
        if index_dim != dim:
            raise ValueError(f"the index at index_path (entity type {entity_type!r}) has dim {index_dim} but the query "
                             f"tower outputs {dim}")
    index_count = sum(count for _, count in shapes.values())
    if encoder_runtime == "onnx":
        # The graph replaces the weights: the encoder directory holds the config, the vocabulary
        # (copied to the tokenizer below) and query_tower.onnx.
        from omnikern.serve.onnx_encoder import export_encoder_onnx

        tower = query_tower_or_checkpoint
        if isinstance(tower, (str, os.PathLike)):
            tower = load_query_tower(encoder_dir)
        export_encoder_onnx(tower, encoder_dir / C.ENCODER_ONNX_FILE)
        (encoder_dir / TOWER_WEIGHTS_FILE).unlink()

    # The tokenizer pads every row to one width so that requests can be batched (tokenizer model.py).
    max_tokens = int(tower_config["max_tokens"])
    tokenizer_max = json.loads((encoder_dir / WORDPIECE_FILE).read_text(encoding="utf-8"))["options"]["max_length"]
    pad_to = max_tokens if tokenizer_max is None else min(int(tokenizer_max), max_tokens)
    batching = DynamicBatching(max_queue_delay_us=max_queue_delay_us)
    text = TensorSpec(C.TEXT, bytes, [1])
    k = TensorSpec(C.K, np.int32, [1], optional=True)
    entity_type = TensorSpec(C.ENTITY_TYPE, bytes, [1], optional=True)
    ids = TensorSpec(C.INPUT_IDS, np.int64, [-1])
    mask = TensorSpec(C.ATTENTION_MASK, np.int64, [-1])
    embedding = TensorSpec(C.EMBEDDING, np.float32, [dim])
    scores_out = TensorSpec(C.SCORES, np.float32, [-1])
    ids_out = TensorSpec(C.IDS, np.int64, [-1])
    types_out = TensorSpec(C.ENTITY_TYPES, bytes, [-1])

    def model_py(name: str) -> str:
        return (_MODEL_PY_DIR / f"{name}.py").read_text(encoding="utf-8")

    # Each step's parameters; the fused omnisearch gets all three sets.
    tokenizer_params = {"max_text_bytes": str(C.MAX_TEXT_BYTES), "threads": str(torch_threads), "pad_to": str(pad_to)}
    encoder_params = {"torch_threads": str(torch_threads), "encoder_runtime": encoder_runtime}
    scorer_params = {"k_default": str(k_default), "max_k": str(max_k), "index_class": index_class,
                     "torch_threads": str(torch_threads)}
    copy_file_atomic(encoder_dir / WORDPIECE_FILE, out_dir / C.TOKENIZER / str(version) / C.WORDPIECE_FILE)
    write_model(out_dir, ModelConfig(
        name=C.TOKENIZER, inputs=[text], outputs=[ids, mask], max_batch_size=max_batch_size,
        dynamic_batching=batching, instance_kind="KIND_CPU", parameters=tokenizer_params,
    ), model_py(C.TOKENIZER), version=version)
    write_model(out_dir, ModelConfig(
        name=C.QUERY_ENCODER, inputs=[ids, mask], outputs=[embedding], max_batch_size=max_batch_size,
        dynamic_batching=batching, instance_kind=instance_kind, instance_count=instance_count,
        parameters=encoder_params,
    ), model_py(C.QUERY_ENCODER), version=version)
    _copy_index(index_path, out_dir / C.SCORER / str(version))
    write_model(out_dir, ModelConfig(
        name=C.SCORER, inputs=[embedding, k, entity_type], outputs=[scores_out, ids_out, types_out],
        max_batch_size=max_batch_size,
        dynamic_batching=batching, instance_kind=instance_kind, instance_count=instance_count,
        parameters=scorer_params,
    ), model_py(C.SCORER), version=version)
    if pipeline == "fused":
        # One python-backend omnisearch with a copy of every file the three steps read (the model
        # directories stay self-contained: Triton may load a model from a copy of its directory).
        fused_dir = out_dir / C.OMNISEARCH / str(version)
        for source in [encoder_dir / name for name in
                       (WORDPIECE_FILE, TOWER_CONFIG_FILE, TOWER_WEIGHTS_FILE, C.ENCODER_ONNX_FILE)]:
            if source.is_file():
                copy_file_atomic(source, fused_dir / source.name)
        _copy_index(index_path, fused_dir)
        write_model(out_dir, ModelConfig(
            name=C.OMNISEARCH, inputs=[text, k, entity_type], outputs=[scores_out, ids_out, types_out],
            max_batch_size=max_batch_size,
            dynamic_batching=batching, instance_kind=instance_kind, instance_count=instance_count,
            parameters={**tokenizer_params, **encoder_params, **scorer_params},
        ), model_py(C.OMNISEARCH), version=version)

    tokenize_step = (C.TOKENIZER, {C.TEXT: C.TEXT}, {C.INPUT_IDS: C.INPUT_IDS, C.ATTENTION_MASK: C.ATTENTION_MASK})
    encode_step = (C.QUERY_ENCODER, {C.INPUT_IDS: C.INPUT_IDS, C.ATTENTION_MASK: C.ATTENTION_MASK},
                   {C.EMBEDDING: C.EMBEDDING})
    score_step = (C.SCORER, {C.EMBEDDING: C.EMBEDDING, C.K: C.K, C.ENTITY_TYPE: C.ENTITY_TYPE},
                  {C.SCORES: C.SCORES, C.IDS: C.IDS, C.ENTITY_TYPES: C.ENTITY_TYPES})
    ensembles = [(C.ENCODE, [text], [embedding], [tokenize_step, encode_step])]
    if pipeline == "ensemble":
        ensembles.insert(0, (C.OMNISEARCH, [text, k, entity_type], [scores_out, ids_out, types_out],
                             [tokenize_step, encode_step, score_step]))
    for name, inputs, outputs, steps in ensembles:
        (out_dir / name / str(version)).mkdir(parents=True, exist_ok=True)  # ensembles need an (empty) version dir
        write_text_atomic(out_dir / name / "config.pbtxt", _ensemble_pbtxt(name, inputs, outputs, max_batch_size, steps))
    write_text_atomic(out_dir / "README.txt", _readme(max_batch_size, instance_kind, k_default, max_k, dim, index_count,
                                                          pad_to, torch_threads, encoder_runtime, pipeline,
                                                          sorted(shapes)))
    return out_dir


def _copy_index(index_path: Path, version_dir: Path) -> None:
    """Copies an Int8Index file to ``index.safetensors``, or an index directory (an index set or one
    sharded index) to ``index/``, into a model's version directory (the directory under a temporary
    name first, so a failed copy leaves none)."""
    if index_path.is_file():
        copy_file_atomic(index_path, version_dir / C.INDEX_FILE)
        return
    target = version_dir / C.INDEX_DIR
    staging = version_dir / f".{C.INDEX_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(index_path, staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _index_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """Entity type -> ``(dim, rows)`` of the index at ``path``, from headers and manifests only
    (no tensor data loaded): an Int8Index file (type ``item``), a sharded index directory (type
    ``item``) or an index set."""
    from omnikern.sharded_index import MANIFEST, SET_FILE

    def sharded(directory: Path) -> tuple[int, int]:
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            return int(manifest["dim"]), int(manifest["count"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"index_path {str(directory)!r} has no readable {MANIFEST}: {error}") from None

    if path.is_file():
        return {C.SINGLE_INDEX_TYPE: _index_shape(path)}
    if (path / MANIFEST).is_file():
        return {C.SINGLE_INDEX_TYPE: sharded(path)}
    if (path / SET_FILE).is_file():
        try:
            names = json.loads((path / SET_FILE).read_text(encoding="utf-8"))["entity_types"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"index_path {str(path)!r}: {SET_FILE} is not readable: {error}") from None
        return {t: sharded(path / sub) for t, sub in sorted(names.items())}
    raise ValueError(f"index_path {str(path)!r} is a directory without {MANIFEST} or {SET_FILE}: not an index "
                     "(omnikern index build writes one)")


def _index_shape(path: Path) -> tuple[int, int]:
    """``(dim, rows)`` of a saved index, read from its safetensors header (no tensor data loaded)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "codes" not in handle.keys():
            raise ValueError(f"index_path {str(path)!r} is not an Int8Index file (no 'codes' tensor)")
        shape = handle.get_slice("codes").get_shape()
    if len(shape) != 2:
        raise ValueError(f"index_path {str(path)!r} has codes of shape {shape}, expected (N, D)")
    return int(metadata.get("dim", shape[1])), int(shape[0])
