"""Fixtures for the adapters library tests: offline, CPU (or PAS_TEST_DEVICE), small models (``tiny`` is tests/conftest.py's one model)."""

from __future__ import annotations

import pytest
import torch

from adapters.backbone import load_backbone
from tests.support import TEST_DEVICE


@pytest.fixture(scope="session")
def vitb32():
    """A randomly initialised ViT-B-32: a real open_clip architecture, no weights downloaded."""
    return load_backbone("ViT-B-32", device=TEST_DEVICE)


@pytest.fixture
def pixels(tiny):
    size = tiny.identity.image_size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    return pixels.to(device=tiny.device, dtype=tiny.dtype)  # as the backbone's own preprocessing gives them


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test here on one intra-op thread, then restore the setting.

    The tensors in these tests are small: a second thread gains little, while on a CPU shared with
    other jobs oversubscription made training steps several times slower. One thread also makes
    the learning test's numbers independent of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
