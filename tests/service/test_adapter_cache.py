"""The LRU of loaded adapters: bounded in bytes and count, least recently used out first."""

from __future__ import annotations

import threading

import pytest

from adapters.artifact import save_adapter
from adapters.prompted import PromptConfig, PromptedCLIP
from service.adapter_store import AdapterStore


@pytest.fixture
def stored(tmp_path, tiny_backbone):
    """Adapters v1 of collections 1..4 on disk, and the bytes one of them holds in memory."""
    config = PromptConfig(text_tokens=4, residual_rank=2)
    store = AdapterStore(tmp_path, tiny_backbone, batch_size=8, cache_size=100)
    for cid in range(1, 5):
        store.path(cid, 1).parent.mkdir(parents=True)
        save_adapter(store.path(cid, 1), PromptedCLIP.from_backbone(tiny_backbone, config))
    one = store.encoder(1, 1, "v1").nbytes
    return tmp_path, one


def test_the_cache_evicts_the_least_recently_used_beyond_its_byte_bound(stored, tiny_backbone):
    root, one = stored
    store = AdapterStore(root, tiny_backbone, batch_size=8, cache_size=100, cache_bytes=3 * one)
    first = store.encoder(1, 1, "v1")
    store.encoder(2, 1, "v1")
    store.encoder(3, 1, "v1")
    assert store.cached == (3, 3 * one)
    assert store.encoder(1, 1, "v1") is first  # a hit: collection 1 is now the most recent
    store.encoder(4, 1, "v1")  # over the bound: collection 2, the least recently used, goes
    assert store.cached == (3, 3 * one)
    assert store.encoder(1, 1, "v1") is first
    assert store.encoder(3, 1, "v1") is not None
    assert store.cached[0] == 3
    reloaded = store.encoder(2, 1, "v1")  # evicted: loaded again, a new object
    assert store.cached == (3, 3 * one)
    assert reloaded.nbytes == one


def test_the_count_bound_and_forget_keep_the_bytes_right(stored, tiny_backbone):
    root, one = stored
    store = AdapterStore(root, tiny_backbone, batch_size=8, cache_size=2, cache_bytes=10**9)
    for cid in (1, 2, 3):
        store.encoder(cid, 1, "v1")
    assert store.cached == (2, 2 * one)
    store.forget(3)
    assert store.cached == (1, one)


def test_an_adapter_larger_than_the_bound_still_serves(stored, tiny_backbone):
    root, one = stored
    store = AdapterStore(root, tiny_backbone, batch_size=8, cache_size=100, cache_bytes=one // 2)
    store.encoder(1, 1, "v1")
    store.encoder(2, 1, "v1")
    assert store.cached == (1, one)


def test_concurrent_first_searches_of_one_adapter_load_it_once(stored, tiny_backbone):
    root, _ = stored
    store = AdapterStore(root, tiny_backbone, batch_size=8, cache_size=100)
    got = []
    threads = [threading.Thread(target=lambda: got.append(store.encoder(1, 1, "v1"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6
    assert all(e is got[0] for e in got)
    assert store.cached[0] == 1
