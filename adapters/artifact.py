"""An adapter on disk: one safetensors file, prompt tensors plus metadata in its header.

The header's ``__metadata__`` (string values only, by the format's rule) carries everything a
reader needs without the backbone: format version, the identity of the backbone whose vector
space the prompts belong to, prompt shapes and insertion layers, the ``PromptConfig``, the
training config and metrics, and the creation time. Loading checks the identity against the
running backbone and refuses a mismatch: prompts trained for one model are noise for another.

Learned tensors are stored in float16, half the bytes of float32 (a recipe adapter with block
adapters stays under 1 MB on ViT-B-32), and loaded back into the model's float32 parameters; on a
trained adapter of the benchmark's backbone the rounding moved no coordinate of a unit embedding by
more than 1e-5. Kept in float32: the mixing weight (one number, chosen
exactly), and any tensor float16 cannot hold (a value past its range). Files written in float32
before this still load.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as save_tensors_to_bytes

from .backbone import BackboneIdentity
from .prompted import PromptConfig, PromptedCLIP

FORMAT = "prompt-adapter"
FORMAT_VERSION = 1
STORED_FLOAT = torch.float16
KEPT_FLOAT32 = ("adapted_weight",)


class AdapterError(ValueError):
    """The file is not a readable adapter of a known format version."""


class AdapterIncompatible(AdapterError):
    """The adapter was trained for a different backbone than the one running."""

    def __init__(self, fields: list[str], stored: BackboneIdentity, running: BackboneIdentity):
        self.fields = fields
        details = ", ".join(f"{f}: adapter {getattr(stored, f)!r} != running {getattr(running, f)!r}" for f in fields)
        super().__init__(f"adapter was trained for another backbone ({details})")


@dataclass
class AdapterInfo:
    format_version: int
    backbone: BackboneIdentity
    prompt_config: PromptConfig
    prompt_shapes: dict[str, list[int]]
    visual_layers: list[int]
    num_parameters: int
    num_bytes: int
    created_at: str
    train_config: dict | None = None
    metrics: dict | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["backbone"] = self.backbone.to_dict()
        out["prompt_config"] = self.prompt_config.to_dict()
        return out


def _json(value) -> str:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.dumps(value, sort_keys=True)


def serialize_adapter(prompted: PromptedCLIP, train_config=None, metrics: dict | None = None) -> bytes:
    """The adapter file's bytes (``save_adapter`` writes them; the service may store them itself)."""
    if prompted.identity is None:
        raise AdapterError("the PromptedCLIP carries no backbone identity; build it with PromptedCLIP.from_backbone")
    tensors = {name: _stored(name, value) for name, value in prompted.prompt_state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "backbone": _json(prompted.identity.to_dict()),
        "prompt_config": _json(prompted.config.to_dict()),
        "prompt_shapes": _json(prompted.prompt_shapes()),
        "visual_layers": _json(prompted.visual_layers),
        "num_parameters": str(prompted.num_parameters()),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_config": _json(train_config),
        "metrics": _json(metrics),
    }
    return save_tensors_to_bytes(tensors, metadata=metadata)


def _stored(name: str, value: torch.Tensor) -> torch.Tensor:
    if not value.is_floating_point() or name in KEPT_FLOAT32:
        return value
    half = value.to(STORED_FLOAT)
    if bool(torch.isfinite(half).all()) or not bool(torch.isfinite(value).all()):
        return half
    return value  # float16 would turn a large value into infinity


def stored_dtypes(name: str) -> tuple[str, ...]:
    """The safetensors dtypes a file may hold for this tensor: the word table's ids are integers; a learned
    tensor is float16, or float32 (kept so by ``_stored``, or written before float16 storage)."""
    return ("I64",) if name == "word_ids" else ("F16", "F32")


def save_adapter(path: str | os.PathLike, prompted: PromptedCLIP, train_config=None, metrics: dict | None = None) -> AdapterInfo:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    blob = serialize_adapter(prompted, train_config, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return read_adapter_info(blob)


def _header_metadata(blob: bytes) -> dict:
    # safetensors layout: little-endian u64 header length, then the JSON header.
    if len(blob) < 8:
        raise AdapterError("not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", blob[:8])
    try:
        header = json.loads(blob[8 : 8 + size])
    except ValueError as exc:
        raise AdapterError(f"not a safetensors file: {exc}") from exc
    return header.get("__metadata__") or {}


def _read(source: str | os.PathLike | bytes, with_tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor], int]:
    """(metadata, tensors, size in bytes) from a path or the file's bytes."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            blob = bytes(source)
            tensors = load_tensors_from_bytes(blob) if with_tensors else {}
            return _header_metadata(blob), tensors, len(blob)
        path = Path(source)
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if with_tensors else {}
            return fh.metadata() or {}, tensors, path.stat().st_size
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot read adapter: {exc}") from exc


def _info(meta: dict, size: int) -> AdapterInfo:
    if meta.get("format") != FORMAT:
        raise AdapterError(f"not a prompt adapter (format {meta.get('format')!r})")
    version = int(meta.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise AdapterError(f"adapter format version {version} is not supported (expected {FORMAT_VERSION})")
    return AdapterInfo(
        format_version=version,
        backbone=BackboneIdentity.from_dict(json.loads(meta["backbone"])),
        prompt_config=PromptConfig.from_dict(json.loads(meta["prompt_config"])),
        prompt_shapes=json.loads(meta["prompt_shapes"]),
        visual_layers=json.loads(meta["visual_layers"]),
        num_parameters=int(meta["num_parameters"]),
        num_bytes=size,
        created_at=meta["created_at"],
        train_config=json.loads(meta.get("train_config", "null")),
        metrics=json.loads(meta.get("metrics", "null")),
    )


def read_adapter_info(source: str | os.PathLike | bytes) -> AdapterInfo:
    """The metadata of an adapter, no backbone needed."""
    meta, _, size = _read(source, with_tensors=False)
    return _info(meta, size)


def load_adapter(source: str | os.PathLike | bytes, backbone) -> PromptedCLIP:
    """A PromptedCLIP on ``backbone`` with the stored prompts; refuses another backbone's adapter."""
    meta, tensors, size = _read(source)
    info = _info(meta, size)
    differing = info.backbone.mismatch(backbone.identity)
    if differing:
        raise AdapterIncompatible(differing, info.backbone, backbone.identity)
    prompted = PromptedCLIP.from_backbone(backbone, info.prompt_config)
    if prompted.visual_layers != info.visual_layers:
        raise AdapterError(f"visual prompt layers {info.visual_layers} do not fit this backbone ({prompted.visual_layers})")
    try:
        prompted.load_prompt_state_dict(tensors)
    except ValueError as exc:
        raise AdapterError(str(exc)) from exc
    return prompted
