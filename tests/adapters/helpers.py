"""Small helpers shared by the adapters tests."""

from __future__ import annotations

import torch


def backbone_digest(model: torch.nn.Module) -> str:
    """A hash over every tensor of a model: equal before and after means nothing was trained."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
