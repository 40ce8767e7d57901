"""A small client for an exported omnikern repository: ``search(texts, k)`` and ``encode(texts)``.

It speaks HTTP or gRPC through ``tritonclient``, sends texts as one BYTES tensor of shape (B, 1)
and splits inputs larger than the server's max batch size into chunks (read once from the
``omnisearch`` model's config). Use it as a context manager, or call :meth:`Client.close`: an
unclosed ``tritonclient`` client keeps its socket open.

:class:`MultiClient` sends each search to several servers, each holding a part of the catalogue,
and merges their answers.

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

__all__ = ["Client", "MultiClient"]

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

    def search(self, texts: Sequence[str], k: int | None = None, *, entity_type: str | None = None,
               return_entity_types: bool = False) -> tuple[np.ndarray, ...]:
        """Returns ``(scores float32 (N, k), ids int64 (N, k))``, best first, for N texts (with
        ``return_entity_types``, also the (N, k) object array of each id's entity type, ``""`` in
        the gaps).

        ``k=None`` leaves k to the server's default; ``entity_type=None`` searches every entity
        type the server serves (merged by score). Inputs over the max batch size go in several
        requests, in order.

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
            ValueError: ``k`` is not None or an int >= 1; ``entity_type`` is not None or a string.
        """
        _check_k(k)
        return self._top_k(C.OMNISEARCH, C.TEXT, "BYTES", self._chunks(texts), k, entity_type, return_entity_types)

    def search_embeddings(self, embeddings: np.ndarray, k: int | None = None, *, entity_type: str | None = None,
                          return_entity_types: bool = False) -> tuple[np.ndarray, ...]:
        """Returns :meth:`search`'s arrays for N query embeddings of your own (N, D) float32: the
        ``scorer`` model alone, the index search without the text encoder.

        Raises:
            ValueError: ``embeddings`` is not (N, D) with the served D; ``k`` is not None or an int >= 1.
        """
        _check_k(k)
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got shape {x.shape}")
        batches = (x[start:start + self.max_batch_size] for start in range(0, x.shape[0], self.max_batch_size))
        return self._top_k(C.SCORER, C.EMBEDDING, "FP32", batches, k, entity_type, return_entity_types)

    def _top_k(self, model: str, name: str, dtype: str, batches, k: int | None, entity_type: str | None,
               with_types: bool) -> tuple[np.ndarray, ...]:
        """One request per batch of input ``name`` to ``model``; the (scores, ids[, types]) rows in order."""
        if entity_type is not None and (not isinstance(entity_type, str) or not entity_type):
            raise ValueError(f"entity_type must be None or a non-empty string, got {entity_type!r}")
        outputs = (C.SCORES, C.IDS, C.ENTITY_TYPES) if with_types else (C.SCORES, C.IDS)
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for batch in batches:
            inputs = {name: (batch, dtype)}
            if k is not None:
                inputs[C.K] = (np.full((batch.shape[0], 1), k, dtype=np.int32), "INT32")
            if entity_type is not None:
                inputs[C.ENTITY_TYPE] = (np.full((batch.shape[0], 1), entity_type.encode(), dtype=np.object_), "BYTES")
            for part, array in zip(parts, self._infer(model, inputs, outputs)):
                part.append(array)
        if not parts[0]:
            width = 0 if k is None else k
            empty = (np.empty((0, width), np.float32), np.empty((0, width), np.int64), np.empty((0, width), object))
            return empty[:len(outputs)]
        out = [np.concatenate(part) for part in parts]
        if with_types:
            out[2] = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(out[2])
        return tuple(out)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns the query embeddings (N, D) float32, unit rows, for N texts.

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
        """
        parts = [self._infer(C.ENCODE, {C.TEXT: (batch, "BYTES")}, (C.EMBEDDING,))[0] for batch in self._chunks(texts)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)


def _check_k(k) -> None:
    check_int("k", k, none_ok=True)


class MultiClient:
    """Several servers, each serving a part of one catalogue, searched as one (docs/serving.md,
    "Past one server"): every request goes to every server at once (a thread each) and their top-k
    lists are merged by score, ties by server order and then each server's own order, so the answer
    equals one server holding everything. ``encode`` asks the first server (all serve the same
    query tower).

    Args:
        urls: ``"host:port"`` of each server, in the order that breaks ties.
        protocol, max_batch_size, timeout_s: as :class:`Client`, for every server.

    Errors of one server are raised with its URL in the message.
    """

    def __init__(self, urls: Sequence[str], protocol: str = "http", *, max_batch_size: int | None = None,
                 timeout_s: float = 60.0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if isinstance(urls, str) or not urls:
            raise ValueError(f"urls must be a non-empty list of 'host:port', got {urls!r}")
        # One thread per server, which also builds that server's Client: tritonclient's HTTP client
        # runs on gevent and must stay on the thread that created it.
        self._threads = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnikern-client") for _ in urls]
        self.clients: list[Client] = []
        try:
            for thread, url in zip(self._threads, urls):
                self.clients.append(thread.submit(Client, url, protocol, max_batch_size=max_batch_size,
                                                  timeout_s=timeout_s).result())
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Closes every connection; safe to call twice."""
        for thread, client in zip(self._threads, self.clients):
            thread.submit(client.close).result()
        for thread in self._threads:
            thread.shutdown()
        self.clients, self._threads = [], []

    def __enter__(self) -> MultiClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MultiClient({[c.url for c in self.clients]!r})"

    def _each(self, method: str, *args, **kwargs) -> list:
        """Calls ``method`` on every server at once; an error names its server."""

        def call(client: Client):
            try:
                return getattr(client, method)(*args, **kwargs)
            except Exception as error:
                message = f"server {client.url}: {error}"
                try:
                    named = type(error)(message)
                except Exception:  # an exception type that takes other arguments
                    named = RuntimeError(message)
                raise named from error

        if not self.clients:
            raise RuntimeError("the client is closed")
        futures = [thread.submit(call, client) for thread, client in zip(self._threads, self.clients)]
        return [future.result() for future in futures]

    @staticmethod
    def _merge(results: list[tuple[np.ndarray, ...]], k: int | None) -> tuple[np.ndarray, ...]:
        width = k if k is not None else max(r[0].shape[1] for r in results)
        scores = np.concatenate([r[0] for r in results], axis=1)
        # Concatenated in server order, each list best first: a stable sort by score keeps ties in
        # server order, then each server's own order; the gaps (-inf) sort last.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
        return tuple(np.take_along_axis(np.concatenate([r[i] for r in results], axis=1), order, 1)
                     for i in range(len(results[0])))

    def search(self, texts: Sequence[str], k: int | None = None, *, entity_type: str | None = None,
               return_entity_types: bool = False) -> tuple[np.ndarray, ...]:
        """:meth:`Client.search` over every server, merged."""
        texts = list(texts) if not isinstance(texts, (str, bytes)) else texts
        results = self._each("search", texts, k, entity_type=entity_type, return_entity_types=return_entity_types)
        return self._merge(results, k)

    def search_embeddings(self, embeddings: np.ndarray, k: int | None = None, *, entity_type: str | None = None,
                          return_entity_types: bool = False) -> tuple[np.ndarray, ...]:
        """:meth:`Client.search_embeddings` over every server, merged."""
        results = self._each("search_embeddings", embeddings, k, entity_type=entity_type,
                             return_entity_types=return_entity_types)
        return self._merge(results, k)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The query embeddings, from the first server."""
        return self._threads[0].submit(self.clients[0].encode, texts).result()
