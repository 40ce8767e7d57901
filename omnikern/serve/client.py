"""A small client for an exported omnikern repository: ``search(texts, k)`` and ``encode(texts)``.

It speaks HTTP or gRPC through ``tritonclient``, sends texts as one BYTES tensor of shape (B, 1)
and splits inputs larger than the server's max batch size into chunks (read once from the
``omnisearch`` model's config). Use it as a context manager, or call :meth:`Client.close`: an
unclosed ``tritonclient`` client keeps its socket open.

Example::

    with Client("127.0.0.1:8000") as client:
        scores, ids = client.search(["tomato soup", "pancakes"], k=5)   # (2, 5) float32, int64
        embeddings = client.encode(["tomato soup"])                      # (1, D) float32
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnikern._checks import check_int
from omnikern.serve import contract as C

__all__ = ["Client"]

_PROTOCOLS = ("http", "grpc")


class Client:
    """Talks to a Triton server serving an :func:`~omnikern.serve.export.export_triton` repository.

    Args:
        url: ``"host:port"`` of the HTTP or gRPC endpoint (e.g. ``TritonServer.url_http``).
        protocol: ``"http"`` or ``"grpc"``.
        max_batch_size: rows per request; None reads it from the server (the ensemble's config).
        timeout_s: network timeout per request (HTTP), or per call (gRPC).

    Server-side errors (a bad request, a model failure) raise ``tritonclient.utils.InferenceServerException``.
    """

    def __init__(self, url: str, protocol: str = "http", *, max_batch_size: int | None = None,
                 timeout_s: float = 60.0) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
        if not isinstance(url, str) or not url or "://" in url:
            raise ValueError(f"url must be 'host:port' without a scheme, got {url!r}")
        check_int("max_batch_size", max_batch_size, none_ok=True)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, float(timeout_s)
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module
        self._max_batch_size = max_batch_size
        self._dim: int | None = None

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the connection; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, protocol={self.protocol!r}, {'open' if self._client else 'closed'})"

    def _live(self):
        if self._client is None:
            raise RuntimeError("the client is closed")
        return self._client

    # ---- server facts ------------------------------------------------------------------------
    def _config(self, model: str) -> dict:
        if self.protocol == "http":
            return self._live().get_model_config(model)
        return self._live().get_model_config(model, as_json=True)["config"]

    @property
    def max_batch_size(self) -> int:
        """Rows per request: the given value, else the ``omnisearch`` ensemble's max batch size."""
        if self._max_batch_size is None:
            self._max_batch_size = int(self._config(C.OMNISEARCH)["max_batch_size"])
        return self._max_batch_size

    @property
    def dim(self) -> int:
        """The embedding width D, from the ``encode`` ensemble's config."""
        if self._dim is None:
            outputs = self._config(C.ENCODE)["output"]
            self._dim = int(next(o for o in outputs if o["name"] == C.EMBEDDING)["dims"][0])
        return self._dim

    def is_ready(self) -> bool:
        """True when the server says it is ready."""
        return bool(self._live().is_server_ready())

    # ---- requests ----------------------------------------------------------------------------
    def _infer(self, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: Sequence[str]) -> list[np.ndarray]:
        # A missing required input would reach Triton's ensemble scheduler, whose answer ("unexpected
        # deadlock") does not name the input (contract module docstring): refuse it here instead.
        missing = [name for name in C.REQUIRED_INPUTS.get(model, ()) if name not in inputs]
        if missing:
            raise ValueError(f"a request to model {model!r} needs input(s) {missing}, got {sorted(inputs)}")
        tensors = []
        for name, (array, dtype) in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        if self.protocol == "http":
            result = self._live().infer(model, tensors, outputs=requested, timeout=int(self.timeout_s * 1e6))
        else:
            result = self._live().infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
        return [result.as_numpy(name) for name in outputs]

    def _chunks(self, texts: Sequence[str]):
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a sequence of str, not a single " + type(texts).__name__)
        items = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
        for i, item in enumerate(items):
            if not isinstance(item, bytes):
                raise TypeError(f"texts[{i}] must be str or bytes, got {type(item).__name__}")
        step = self.max_batch_size
        for start in range(0, len(items), step):
            yield np.array(items[start:start + step], dtype=np.object_).reshape(-1, 1)

    def search(self, texts: Sequence[str], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(scores float32 (N, k), ids int64 (N, k))``, best first, for N texts.

        ``k=None`` leaves k to the server's default. Inputs over the max batch size go in several
        requests, in order.

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
            ValueError: ``k`` is not None or an int >= 1.
        """
        _check_k(k)
        return self._top_k(C.OMNISEARCH, C.TEXT, "BYTES", self._chunks(texts), k)

    def search_embeddings(self, embeddings: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(scores float32 (N, k), ids int64 (N, k))`` for N query embeddings of your own
        (N, D) float32: the ``scorer`` model alone, the index search without the text encoder.

        Raises:
            ValueError: ``embeddings`` is not (N, D) with the served D; ``k`` is not None or an int >= 1.
        """
        _check_k(k)
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got shape {x.shape}")
        batches = (x[start:start + self.max_batch_size] for start in range(0, x.shape[0], self.max_batch_size))
        return self._top_k(C.SCORER, C.EMBEDDING, "FP32", batches, k)

    def _top_k(self, model: str, name: str, dtype: str, batches, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        """One request per batch of input ``name`` to ``model``; the (scores, ids) rows in order."""
        scores, ids = [], []
        for batch in batches:
            inputs = {name: (batch, dtype)}
            if k is not None:
                inputs[C.K] = (np.full((batch.shape[0], 1), k, dtype=np.int32), "INT32")
            s, i = self._infer(model, inputs, (C.SCORES, C.IDS))
            scores.append(s)
            ids.append(i)
        if not scores:
            width = 0 if k is None else k
            return np.empty((0, width), np.float32), np.empty((0, width), np.int64)
        return np.concatenate(scores), np.concatenate(ids)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns the query embeddings (N, D) float32, unit rows, for N texts.

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
        """
        parts = [self._infer(C.ENCODE, {C.TEXT: (batch, "BYTES")}, (C.EMBEDDING,))[0] for batch in self._chunks(texts)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)


def _check_k(k) -> None:
    check_int("k", k, none_ok=True)
