"""Load a frozen open_clip backbone by name + pretrained tag, or from a local checkpoint.

Architectures are data: the JSON configs in ``adapters/model_configs`` are registered with
open_clip's own registry, so the project's tiny test model and its miniature-world model load
through exactly the same factory path as ``ViT-B-32``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import open_clip
import torch
from PIL import Image

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

# The backbone the service falls back to when none is configured and nothing can be downloaded:
# the miniature-world model pretrained by bench/pretrain.py and shipped in the repository.
OFFLINE_MODEL_NAME = "miniworld-vit"
OFFLINE_CHECKPOINT = CHECKPOINT_DIR / "miniworld-vit.safetensors"
# Used only when even that checkpoint is missing (a checkout without the binary).
TINY_MODEL_NAME = "tiny-vit-test"
RANDOM_INIT_SEED = 0


class BackboneError(RuntimeError):
    """The requested backbone cannot be loaded (unknown name, missing file, no network...)."""


def register_model_configs() -> None:
    """Make the project's JSON model configs known to open_clip (idempotent)."""
    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass(frozen=True)
class BackboneIdentity:
    """What a stored embedding's vector space depends on."""

    model_name: str
    pretrained: str | None  # an open_clip tag, "random-init:seed=N", or None for a local file
    checkpoint_sha256: str | None  # set when weights came from a local file
    embed_dim: int
    image_size: int
    context_length: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BackboneIdentity:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]  # JSON: validated by use

    def key(self) -> str:
        """A short stable fingerprint, handy for file names and log lines."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        source = self.pretrained or f"file sha256:{(self.checkpoint_sha256 or '')[:12]}"
        return f"{self.model_name} ({source}, dim {self.embed_dim})"

    def mismatch(self, other: BackboneIdentity) -> list[str]:
        """Names of the fields that differ, empty when the vector spaces agree."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if mine[k] != theirs[k]]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means half precision on GPU and full precision on CPU."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


@dataclass
class Backbone:
    """A frozen CLIP model with the preprocessing and tokenizer that belong to it."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    identity: BackboneIdentity
    device: torch.device
    precision: str
    source_note: str  # a human sentence on where the weights came from

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context_length(self) -> int:
        return self.identity.context_length

    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess PIL images into one batch tensor on the backbone's device and dtype."""
        batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images])
        return batch.to(self.device, dtype=self.dtype)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised float32 image embeddings on the CPU, in input order."""
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.image_tensor(images[start : start + batch_size])
            out.append(self.model.encode_image(pixels, normalize=True).float().cpu())  # type: ignore[operator]  # open_clip Module attr
        return torch.cat(out) if out else torch.empty(0, self.identity.embed_dim)

    @cached_property
    def plain_text_encoder(self):
        """The backbone's text tower run by the prompt library with no prompts: the same vectors as
        ``encode_text`` (checked in tests), but padding after the longest caption is not computed."""
        from adapters.prompted import PromptConfig, PromptedCLIP  # prompted builds on this module

        return PromptedCLIP(self.model, PromptConfig(), self.tokenizer, self.identity)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 text embeddings on the CPU, in input order."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size])
            out.append(self.plain_text_encoder.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.identity.embed_dim)


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_backbone(
    model_name: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Backbone:
    """Load a frozen backbone.

    - ``model_name`` + ``pretrained`` tag: open_clip's own weights (downloaded where the internet
      is reachable, from its cache otherwise).
    - ``model_name`` + ``pretrained`` = a path to a local checkpoint (.pt/.bin/.safetensors).
    - ``model_name`` alone: random initialisation from a fixed seed (tests, mechanics only).
    - nothing: the shipped miniature-world backbone, or the tiny random model if it is absent.
    """
    register_model_configs()
    source_note = ""
    if model_name is None:
        if OFFLINE_CHECKPOINT.exists():
            model_name, pretrained = OFFLINE_MODEL_NAME, str(OFFLINE_CHECKPOINT)
            source_note = (
                "no backbone configured: using the shipped miniature-world backbone "
                f"({OFFLINE_MODEL_NAME}, pretrained offline on synthetic scenes; not a real CLIP)"
            )
        else:
            model_name = TINY_MODEL_NAME
            source_note = (
                "no backbone configured and no shipped checkpoint found: using the tiny "
                "randomly initialised test model; search results are meaningless"
            )
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise BackboneError(f"unknown open_clip model {model_name!r}")

    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    checkpoint_sha = None
    is_file = pretrained is not None and (os.sep in pretrained or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"})
    if is_file:
        path = Path(str(pretrained)).expanduser()
        if not path.is_file():
            raise BackboneError(f"checkpoint file not found: {path}")
        checkpoint_sha = sha256_file(path)
        pretrained = str(path)

    if pretrained is None:
        # Random init must be reproducible: the identity (and every stored vector) depends on it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, device="cpu")
        tag: str | None = f"random-init:seed={RANDOM_INIT_SEED}"
    else:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device="cpu"
            )
        except Exception as exc:  # open_clip raises RuntimeError, OSError, HF errors...
            raise BackboneError(f"could not load {model_name!r} with pretrained={pretrained!r}: {exc}") from exc
        tag = None if is_file else pretrained

    if precision == "fp16":
        model = model.half()
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    model = _freeze(model.to(torch_device))
    tokenizer = open_clip.get_tokenizer(model_name)

    vision: Any = model.visual  # open_clip types its towers as nn.Module
    image_size = vision.image_size[0] if isinstance(vision.image_size, tuple) else int(vision.image_size)
    embed_dim = int(model.encode_text(  # type: ignore[operator]  # open_clip Module attr
        tokenizer(["x"]).to(torch_device)).shape[-1])
    identity = BackboneIdentity(
        model_name=model_name,
        pretrained=tag,
        checkpoint_sha256=checkpoint_sha,
        embed_dim=embed_dim,
        image_size=image_size,
        context_length=int(tokenizer.context_length),
    )
    if not source_note:
        source_note = f"configured backbone {identity.describe()}"
    return Backbone(model, preprocess, tokenizer, identity, torch_device, precision, source_note)
