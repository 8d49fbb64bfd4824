"""An uploaded adapter is untrusted: its header is checked against the running backbone before its
tensors are read, and its values before it can be stored.

Order matters: a small file can claim huge prompts in its metadata (the config the prompts are
built from), so the config is bounded and the header's tensor names, dtypes and shapes must equal
what this backbone would build, all from the safetensors header alone (read lazily through
``safe_open`` on a spooled copy); only then are the tensors loaded, and they must be finite, and
so must a probe query encoded through them (NaN prompts would make every search come back empty).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from adapters.artifact import AdapterError, AdapterIncompatible, load_adapter, read_adapter_info, stored_dtypes
from adapters.prompted import PromptedCLIP
from service.context import ServiceContext
from service.errors import Invalid
from service.schemas import MAX_BLOCK_ADAPTER_RANK, MAX_WORD_TOKENS

MAX_PROMPT_TOKENS = 64  # the tuning API's own upper bounds (text 32, visual 64)
MAX_RESIDUAL_RANK = 512  # the residual map's rank (the recipe's is 32)


def _refuse(code: str, detail: str) -> Invalid:
    return Invalid(code, detail)


def header_tensors(ctx: ServiceContext, blob: bytes) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) from the header only; safetensors checks offsets against the file size."""
    spool = ctx.settings.data_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool, suffix=".safetensors") as fh:
        fh.write(blob)
        fh.flush()
        try:
            with safe_open(fh.name, framework="numpy") as reader:
                return {name: (str(reader.get_slice(name).get_dtype()), list(reader.get_slice(name).get_shape()))
                        for name in reader.keys()}
        except Exception:
            raise _refuse("bad_adapter_file", "not a readable adapter file (expected .safetensors)") from None


def check_adapter_upload(ctx: ServiceContext, blob: bytes) -> PromptedCLIP:
    if not blob:
        raise _refuse("bad_adapter_file", "the adapter file is empty")
    found = header_tensors(ctx, blob)
    try:
        info = read_adapter_info(blob)
    except AdapterError as exc:
        raise _refuse("bad_adapter_file", str(exc)) from None
    except Exception:  # metadata that is not the format's JSON
        raise _refuse("bad_adapter_file", "the adapter's metadata is unreadable") from None
    differing = info.backbone.mismatch(ctx.backbone.identity)
    if differing:
        mismatch = AdapterIncompatible(differing, info.backbone, ctx.backbone.identity)
        raise Invalid("adapter_incompatible", str(mismatch), fields=mismatch.fields)

    config = info.prompt_config
    context = ctx.backbone.identity.context_length
    for name, value, limit in (("text_tokens", config.text_tokens, min(MAX_PROMPT_TOKENS, context - 5)),
                               ("visual_tokens", config.visual_tokens, MAX_PROMPT_TOKENS),
                               ("word_tokens", config.word_tokens, MAX_WORD_TOKENS),
                               ("residual_rank", config.residual_rank, MAX_RESIDUAL_RANK),
                               ("block_adapter_rank", config.block_adapter_rank, MAX_BLOCK_ADAPTER_RANK),
                               ("text_block_adapter_rank", config.text_block_adapter_rank, MAX_BLOCK_ADAPTER_RANK),
                               ("coupling_rank", config.coupling_rank, MAX_BLOCK_ADAPTER_RANK)):
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise _refuse("adapter_shape", f"{name}={value!r} is outside 0..{limit} for this backbone")
    if not config.text_tokens and not config.visual_tokens and not config.word_tokens:
        raise _refuse("adapter_shape", "the adapter has no prompts")
    try:  # bounded above: this allocates at most a few MB of fresh prompts
        expected = PromptedCLIP.from_backbone(ctx.backbone, config).prompt_shapes()
    except Exception:
        raise _refuse("adapter_shape", "the adapter's prompt layout does not fit this backbone") from None
    wanted = {name: (stored_dtypes(name), shape) for name, shape in expected.items()}
    if set(found) != set(wanted) or any(found[name][0] not in dtypes or found[name][1] != shape
                                        for name, (dtypes, shape) in wanted.items()):
        expected_text = {name: (" or ".join(dtypes), shape) for name, (dtypes, shape) in wanted.items()}
        raise _refuse("adapter_shape", f"prompt tensors {describe(found)} do not match what this backbone "
                                       f"builds from the adapter's config: {describe(expected_text)}")

    try:  # load_adapter also checks the word ids: distinct tokens of this vocabulary
        prompted = load_adapter(blob, ctx.backbone)
    except AdapterError as exc:
        raise _refuse("bad_adapter_file", str(exc)) from None
    if not all(torch.isfinite(t).all() for t in prompted.prompt_state_dict().values() if t.is_floating_point()):
        raise _refuse("non_finite", "the adapter's prompts contain NaN or infinite values")
    encoder = ctx.adapters.encoder_for(prompted, "upload-check")
    probes = [encoder.encode_texts(["a photo"])]
    if prompted.visual_layers:
        probes.append(encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))]))
    if not all(np.isfinite(p).all() for p in probes):
        raise _refuse("non_finite", "the adapter's prompts give non-finite embeddings")
    return prompted


def describe(tensors: dict[str, tuple[str, list[int]]]) -> str:
    return ", ".join(f"{name} {dtype}{shape}" for name, (dtype, shape) in sorted(tensors.items())) or "none"
