import threading
import time

import numpy as np
import torch

from adapters.mixed_text import MixedTextEncoder
from adapters.prompted import PromptConfig, PromptedCLIP
from service.adapter_store import AdapterEncoder
from service.batching import TextBatcher
from service.encoders import ZeroShotEncoder


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


class RecordingMixer(MixedTextEncoder):
    """The real mixed encoder, noting which adapters each forward pass held."""

    def __init__(self, backbone):
        super().__init__(backbone.model, backbone.tokenizer)
        self.passes: list[int] = []

    def encode(self, groups):
        time.sleep(0.05)  # long enough for the other requests to queue behind this pass
        self.passes.append(len(groups))
        return super().encode(groups)


def test_requests_of_different_adapters_share_one_pass_and_get_their_own_vectors(tiny_backbone):
    encoders = [ZeroShotEncoder(tiny_backbone, 8)] + [
        AdapterEncoder(PromptedCLIP.from_backbone(tiny_backbone, PromptConfig(text_tokens=2 + i, residual_rank=2, seed=i)),
                       tiny_backbone, f"v{i}", 8) for i in range(3)]
    for encoder in encoders[1:]:
        with torch.no_grad():
            encoder.prompted.residual["text"].up.add_(0.2)
    jobs = [(encoders[i % 4], [f"query {i}", "shared words"]) for i in range(12)]
    batcher = TextBatcher(RecordingMixer(tiny_backbone))
    results: dict[int, np.ndarray] = {}

    def worker(i):
        results[i] = batcher.encode_texts(*jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert max(batcher.mixer.passes) > 1  # a pass held several adapters
    for i, (encoder, texts) in enumerate(jobs):
        np.testing.assert_allclose(results[i], encoder.encode_texts(texts), atol=1e-5)
