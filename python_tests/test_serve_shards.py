"""Two real tritonservers on loopback, each serving half of a two-type catalogue (an index set of
``pin`` and ``product``): one server answers by entity type and merged over types; a MultiClient
over both answers exactly as one in-process index over every item; both servers are gone at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_group_gone, tiny_tower_and_index

pytest.importorskip("tritonclient.http")
pytest.importorskip("pytriton")

from omnikern.index import Int8Index  # noqa: E402
from omnikern.serve import Client, MultiClient, TritonServer, export_triton  # noqa: E402
from omnikern.sharded_index import ShardedIndex, write_index_set  # noqa: E402

DIM = 16


def unit_rows(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    tower, _ = tiny_tower_and_index(tmp, dim=DIM)
    pins, products = unit_rows(40, 11), unit_rows(30, 12)
    pin_ids, product_ids = torch.arange(1000, 1040), torch.arange(2000, 2030)
    repos = []
    for half, (pin_rows, product_rows) in enumerate(((slice(0, 20), slice(0, 15)), (slice(20, 40), slice(15, 30)))):
        write_index_set(tmp / f"set{half}", {
            "pin": ShardedIndex.build(pins[pin_rows], pin_ids[pin_rows], 2),
            "product": ShardedIndex.build(products[product_rows], product_ids[product_rows], 1)})
        repos.append(export_triton(tower, tmp / f"set{half}", tmp / f"repo{half}", encoder_runtime="torch",
                                   pipeline="fused", k_default=5, max_k=50, max_batch_size=8))
    whole = {}
    for name, rows, ids in (("pin", pins, pin_ids), ("product", products, product_ids)):
        whole[name] = Int8Index(DIM)
        whole[name].add(rows, ids)
    halves = []
    for half in range(2):
        index = {}
        for name, rows, ids, part in (("pin", pins, pin_ids, slice(20 * half, 20 * half + 20)),
                                      ("product", products, product_ids, slice(15 * half, 15 * half + 15))):
            index[name] = Int8Index(DIM)
            index[name].add(rows[part], ids[part])
        halves.append(index)
    return {"tower": tower, "repos": repos, "whole": whole, "halves": halves}


@pytest.fixture(scope="module")
def servers(catalogue):
    started = []
    try:
        for repo in catalogue["repos"]:
            server = TritonServer(repo, startup_timeout_s=120, stop_timeout_s=5)
            server.start()
            started.append(server)
        yield started
    finally:
        groups = [s.pid for s in started]
        for server in started:
            server.stop()
        for pgid in groups:
            if pgid is not None:
                assert_group_gone(pgid)


def merged(per_type: dict, queries: torch.Tensor, k: int):
    """The plain-python merge of per-type searches: by score, ties in sorted type order."""
    rows = []
    for q in range(queries.shape[0]):
        pool = []
        for order, name in enumerate(sorted(per_type)):
            scores, ids = per_type[name].search(queries[q:q + 1], k, impl="cpp")
            pool += [(-float(s), order, j, int(i), name) for j, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]
        rows.append(sorted(pool)[:k])
    return rows


def test_one_server_by_type_and_merged(servers, catalogue):
    queries = unit_rows(6, 13).numpy()
    half = catalogue["halves"][0]
    with Client(servers[0].url_http) as client:
        scores, ids, types = client.search_embeddings(queries, 7, entity_type="product", return_entity_types=True)
        want = half["product"].search(torch.from_numpy(queries), 7, impl="cpp")
        np.testing.assert_array_equal(ids, want[1].numpy())
        np.testing.assert_array_equal(scores, want[0].numpy())
        assert set(types.ravel().tolist()) == {"product"}
        scores, ids, types = client.search_embeddings(queries, 7, return_entity_types=True)
        for row, best in enumerate(merged(half, torch.from_numpy(queries), 7)):
            assert ids[row].tolist() == [b[3] for b in best] and types[row].tolist() == [b[4] for b in best]
        # Text goes through the served encoder; the scorer's answer for its embedding is the same.
        texts = ["tomato soup", "apple pie"]
        text_scores, text_ids = client.search(texts, 5, entity_type="pin")
        again = client.search_embeddings(client.encode(texts), 5, entity_type="pin")
        np.testing.assert_array_equal(text_ids, again[1])
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match=r"entity_type 'board' is not served; the served entity "
                                                           r"types are \['pin', 'product'\]"):
            client.search_embeddings(queries, 3, entity_type="board")


@pytest.mark.parametrize("k", [1, 5, 33])
def test_two_servers_answer_as_one_index(servers, catalogue, k):
    queries = unit_rows(5, 14)
    with MultiClient([s.url_http for s in servers]) as client:
        for name in ("pin", "product"):
            scores, ids = client.search_embeddings(queries.numpy(), k, entity_type=name)
            want = catalogue["whole"][name].search(queries, k, impl="cpp")
            np.testing.assert_array_equal(ids, want[1].numpy())
            np.testing.assert_array_equal(scores, want[0].numpy())
        scores, ids, types = client.search_embeddings(queries.numpy(), k, return_entity_types=True)
        for row, best in enumerate(merged(catalogue["whole"], queries, k)):
            assert ids[row].tolist() == [b[3] for b in best] and types[row].tolist() == [b[4] for b in best]
        assert client.encode(["tomato soup"]).shape == (1, DIM)
    with pytest.raises(ValueError, match="urls must be a non-empty list"):
        MultiClient("127.0.0.1:1")
