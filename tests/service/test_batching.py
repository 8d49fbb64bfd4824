import threading
import time

import numpy as np

from service.batching import TextBatcher


class SlowEncoder:
    """Records each forward pass; slow enough that concurrent callers pile up behind it."""

    def __init__(self, fail_on=None):
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        time.sleep(0.05)
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return np.array([[float(len(t)), float(i)] for i, t in enumerate(texts)], dtype=np.float32)


def run_concurrently(batcher, encoder, queries):
    results, errors = {}, {}

    def worker(q):
        try:
            results[tuple(q)] = batcher.encode_texts(encoder, q)
        except Exception as exc:
            errors[tuple(q)] = exc

    threads = [threading.Thread(target=worker, args=(q,)) for q in queries]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    return results, errors


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    encoder = SlowEncoder()
    queries = [["a" * (i + 1)] for i in range(8)] + [["bb", "ccc"]]
    results, errors = run_concurrently(TextBatcher(), encoder, queries)
    assert not errors
    assert len(encoder.calls) < len(queries)  # at least one pass served several requests
    assert sorted(t for call in encoder.calls for t in call) == sorted(t for q in queries for t in q)
    for q in queries:
        assert [row[0] for row in results[tuple(q)]] == [float(len(t)) for t in q]


def test_a_lone_request_is_encoded_alone():
    encoder = SlowEncoder()
    out = TextBatcher().encode_texts(encoder, ["x", "yy"])
    assert encoder.calls == [["x", "yy"]]
    assert out.shape == (2, 2)


def test_a_failure_reaches_every_request_of_its_batch_and_nobody_hangs():
    encoder = SlowEncoder(fail_on="bad")
    results, errors = run_concurrently(TextBatcher(), encoder, [["first"], ["bad"], ["other"], ["more"]])
    assert ("bad",) in errors
    assert set(results) | set(errors) == {("first",), ("bad",), ("other",), ("more",)}


def test_max_batch_is_respected():
    encoder = SlowEncoder()
    run_concurrently(TextBatcher(max_batch=3), encoder, [[f"q{i}"] for i in range(10)])
    assert max(len(call) for call in encoder.calls) <= 3
