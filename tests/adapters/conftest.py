"""Fixtures for the adapters library tests: offline, CPU, small models (``tiny`` is tests/conftest.py's one model)."""

from __future__ import annotations

import pytest
import torch

from adapters.backbone import load_backbone


@pytest.fixture(scope="session")
def vitb32():
    """A randomly initialised ViT-B-32: a real open_clip architecture, no weights downloaded."""
    return load_backbone("ViT-B-32", device="cpu")


@pytest.fixture
def pixels(tiny):
    size = tiny.identity.image_size
    return torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))

