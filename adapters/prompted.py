"""Textual and visual prompt learning on a frozen open_clip model.

``PromptedCLIP`` owns only the prompt vectors; the open_clip model is referenced, never
registered as a submodule, so ``parameters()``, ``state_dict()`` and any optimiser built from
them see the prompts alone.

- Textual prompts (CoOp, "front" position): M vectors spliced into the token-embedding sequence
  right after the start token. Captions are tokenized to ``context_length - M`` so the spliced
  sequence keeps the model's context length, its positional embedding and its causal mask.
  With ``text_deep`` a fresh set of M vectors replaces those positions before every later text
  block as well (MaPLe / PromptSRC style deep language prompts).
- Visual prompts (VPT) for open_clip ViT towers: N tokens appended to the class + patch tokens.
  They enter at block ``visual_start`` and, with ``visual_deep_from`` set, are replaced by fresh
  tokens before every block from that layer on (VPT-deep). They are dropped before pooling, so
  the class token / average / attentional pooling only ever sees image tokens.

- Collection words: a learned offset added to the token embedding of each of the K words (BPE
  tokens) a collection's training captions use most. A personal collection names things the
  backbone never learned (a pet's name, a product code, a trade's terms): their token embeddings
  are whatever pretraining left, often the random initialisation, and no prompt in front of a
  caption can rewrite a word inside it. The offsets start at zero, so an untrained table changes
  nothing; words outside the table, and the zero-shot path, keep the backbone's embeddings.

- Block adapters (optional): beside each prompted image block, a bottleneck ``up(gelu(down(x)))``
  is added to the block's output (AdaptFormer's parallel adapter, Chen et al., 2022), ``up``
  zero-initialised so an untrained one changes nothing. Prompts can only add tokens for the frozen
  attention to read; these write into every token's residual stream. ``text_block_adapter_rank``
  puts the same kind beside every text block (a lever the benchmark measures; no default uses it).

- Coupled prompts (optional, MaPLe's idea, Khattak et al., 2023): each prompted image block's
  first visual prompts gain a low-rank map of the text prompts that enter the text block of the
  same index, so the text prompts learn from the image side too. The map's ``up`` starts at zero,
  so an untrained coupling changes nothing (a lever the benchmark measures; no default uses it).

Two optional pieces act on the finished embeddings, so an index built with ``encode_image`` and
a query from ``encode_text`` need nothing else:

- a low-rank residual map per tower, ``e <- normalize(e + U V^T e)`` (U zero-initialised, so an
  untrained map is the identity): the cheap linear adapter's power, added to the prompts';
- a mixing weight with the zero-shot embedding, ``normalize(w * adapted + (1 - w) * zero_shot)``
  (the WiSE-FT idea applied to embeddings), set after training from held-out pairs; ``w = 0`` is
  exactly zero-shot, which is what makes "never worse than zero-shot on val" reachable.

We compose open_clip's own pieces (``VisionTransformer._embeds`` and ``_pool``, the text
transformer, ``text_global_pool``) and only run the block loop ourselves, which is what lets
prompts be injected between blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, VisionTransformer, text_global_pool
from torch import nn


class _LowRankMap(nn.Module):
    """``up(down(x))`` from ``in_dim`` to ``out_dim``, ``up`` zero-initialised: zero until trained."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, gen: torch.Generator):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, in_dim, generator=gen) / math.sqrt(in_dim))
        self.up = nn.Parameter(torch.zeros(out_dim, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.T.to(x.dtype)) @ self.up.T.to(x.dtype)


class _LowRankResidual(_LowRankMap):
    """``x + up(down(x))`` with ``up`` zero-initialised: the identity until trained."""

    def __init__(self, dim: int, rank: int, gen: torch.Generator):
        super().__init__(dim, dim, rank, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class _BlockAdapter(_LowRankResidual):
    """``up(gelu(down(x)))``, added beside a frozen block: the same factors, a non-linear bottleneck, no identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ self.down.T.to(x.dtype)) @ self.up.T.to(x.dtype)


def collection_words(tokenizer: Callable, captions: Sequence[str], k: int) -> list[int]:
    """The ``k`` token ids the captions use most (ties: the smaller id), special tokens excluded."""
    if k <= 0 or not captions:
        return []
    tokens = tokenizer(list(captions))
    end = tokens.argmax(dim=-1)  # CLIP's BPE: end-of-text is the largest id
    position = torch.arange(tokens.shape[1])
    inside = (position > 0) & (position < end.unsqueeze(1))  # after the start, before the end: no padding
    ids, counts = torch.unique(tokens[inside], return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))
    return [int(ids[i]) for i in order[:k]]


class PromptsUnsupported(ValueError):
    """The backbone's tower cannot take the requested kind of prompt."""


@dataclass(frozen=True)
class PromptConfig:
    text_tokens: int = 0  # M: learnable vectors after the start token
    visual_tokens: int = 0  # N: learnable tokens joined to the image tokens
    visual_start: int = 0  # block whose input first receives the visual prompts (0: after embeddings)
    visual_deep_from: int | None = None  # fresh prompts before every block >= this (None: shallow)
    text_init: str = "a photo of a"  # a phrase whose token embeddings start the prompts, or "random"
    seed: int = 0
    text_deep: bool = False  # fresh text prompts before every text block, not only the first
    residual_rank: int = 0  # rank of the residual map on each tower's output embedding (0: none)
    zero_shot_mix: bool = False  # carry a weight mixing the adapted with the zero-shot embedding
    word_tokens: int = 0  # K: token ids whose embedding gets a learned offset (the collection's words)
    block_adapter_rank: int = 0  # bottleneck beside every prompted image block (0: none)
    text_block_adapter_rank: int = 0  # bottleneck beside every text block (0: none)
    coupling_rank: int = 0  # rank of the text->visual prompt maps of coupled prompts (0: none)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def visual_layers(self, depth: int) -> list[int]:
        """The blocks before which a fresh set of visual prompts is inserted."""
        if self.visual_tokens == 0:
            return []
        if not 0 <= self.visual_start < depth:
            raise ValueError(f"visual_start={self.visual_start} outside a {depth}-block tower")
        layers = [self.visual_start]
        if self.visual_deep_from is not None:
            layers += list(range(max(self.visual_deep_from, self.visual_start + 1), depth))
        return layers


@dataclass
class _TextParts:
    """The pieces of an open_clip text tower; CLIP keeps them on the model, CustomTextCLIP on ``.text``."""

    # open_clip's modules are typed as plain nn.Module (attribute access yields Tensor | Module for
    # mypy); the towers' real interfaces are duck-typed, so they are Any here.
    token_embedding: Any
    positional_embedding: torch.Tensor
    transformer: Any
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None
    attn_mask: torch.Tensor | None

    def head(self, x: torch.Tensor, pool_tokens: torch.Tensor) -> torch.Tensor:
        """After the blocks: the final norm, open_clip's pooling at the end-of-text token, the projection."""
        x = self.ln_final(x)
        x = text_global_pool(x, pool_tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        if self.text_projection is not None:
            return x @ self.text_projection
        return x


def _text_parts(model: Any) -> _TextParts | None:
    """None when the text tower is not one we can splice prompts into (HF encoders, CoCa-style cls)."""
    if hasattr(model, "token_embedding") and hasattr(model, "text_pool_type"):  # open_clip.CLIP
        return _TextParts(
            model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
            model.text_projection, model.text_pool_type, getattr(model, "text_eos_id", None), model.attn_mask,
        )
    text = getattr(model, "text", None)
    # A class embedding or a padding mask changes the sequence layout; not supported for prompts.
    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return _TextParts(
            text.token_embedding, text.positional_embedding, text.transformer, text.ln_final,
            text.text_projection, text.pool_type, getattr(text, "eos_id", None), text.attn_mask,
        )
    return None


def _is_prompt_capable_vit(visual: Any) -> bool:
    return isinstance(visual, VisionTransformer) and hasattr(visual, "_embeds") and hasattr(visual, "_pool")


# Sentinel used in the pooling-only token row at prompt positions: never the argmax (token ids
# are >= 0) and never equal to an end-of-text id.
_PROMPT_TOKEN_ID = -1


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy that shares no memory with ``tensor``."""
    return tensor.detach().to("cpu", torch.float32, copy=True).contiguous()


class PromptedCLIP(nn.Module):
    """Prompt parameters plus the code to run a frozen open_clip model with them."""

    clip: Any  # the frozen open_clip model (duck-typed: CLIP or CustomTextCLIP), never a submodule
    _text: Any  # _TextParts | None; Any because open_clip's attribute types are loose
    text_prompts: nn.Parameter | None
    text_deep_prompts: nn.Parameter | None
    visual_prompts: nn.Parameter | None
    word_deltas: nn.Parameter | None
    text_block_adapters: nn.ModuleList | None
    word_ids: torch.Tensor | None  # the token id of each row of ``word_deltas`` (most used first); -1: unused

    def __init__(
        self,
        model: Any,  # an open_clip CLIP or CustomTextCLIP
        config: PromptConfig,
        tokenizer: Callable | None = None,
        identity=None,  # the backbone's BackboneIdentity, recorded in saved artifacts
    ):
        super().__init__()
        # Bypass nn.Module registration: the backbone must stay out of parameters()/state_dict().
        object.__setattr__(self, "clip", model)
        # The backbone is frozen by contract; no gradient buffers should ever be kept for it.
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.config = config
        self.tokenizer = tokenizer
        self.identity = identity
        self._text = _text_parts(model)
        # 0 for a tower that takes no text prompts (an HF encoder): never used there.
        self.context_length: int = int(self._text.positional_embedding.shape[0]) if self._text else 0
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(config.seed)

        M, N = config.text_tokens, config.visual_tokens
        if M > 0:
            if self._text is None:
                raise PromptsUnsupported("this backbone's text tower does not accept textual prompts")
            if M > self.context_length - 2:
                raise ValueError(f"{M} text prompts leave no room for a caption in context {self.context_length}")
            self.text_prompts = nn.Parameter(self._init_text(M, gen).to(device))
        else:
            self.text_prompts = None
        self.text_deep_prompts = None
        if M > 0 and config.text_deep:
            depth_t = len(self._text.transformer.resblocks)
            # Later blocks' prompts start as copies of the first set (the phrase's embeddings pass
            # through the block, so a copy is a neutral start, not an identity).
            first = self.text_prompts.data.cpu()  # type: ignore[union-attr]  # set just above (M > 0)
            init_deep = first.unsqueeze(0).repeat(depth_t - 1, 1, 1)
            self.text_deep_prompts = nn.Parameter(init_deep.to(device))

        visual = model.visual
        self.vision_prompt_capable = _is_prompt_capable_vit(visual)
        if N > 0 and not self.vision_prompt_capable:
            raise PromptsUnsupported(
                f"visual prompts need an open_clip VisionTransformer; this image tower is "
                f"{type(visual).__name__}: use textual prompts only (visual_tokens=0)"
            )
        depth = len(visual.transformer.resblocks) if self.vision_prompt_capable else 0
        self.visual_layers = config.visual_layers(depth)
        if self.visual_layers:
            width = visual.conv1.out_channels
            # VPT's init: uniform with the fan of a patch projection (Jia et al., 2022, sec. 3.2).
            bound = math.sqrt(6.0 / (3 * visual.patch_size[0] * visual.patch_size[1] + width))
            init = (torch.rand(len(self.visual_layers), N, width, generator=gen) * 2 - 1) * bound
            self.visual_prompts = nn.Parameter(init.to(device))
        else:
            self.visual_prompts = None

        self.block_adapters: nn.ModuleList | None = None
        if config.block_adapter_rank > 0:
            if not self.visual_layers:
                raise ValueError("block adapters sit beside the prompted image blocks: they need visual prompts")
            width = visual.conv1.out_channels
            self.block_adapters = nn.ModuleList(
                _BlockAdapter(width, config.block_adapter_rank, gen) for _ in self.visual_layers).to(device)

        self.coupling: nn.ModuleList | None = None
        if config.coupling_rank > 0:
            if not self.visual_layers or self.text_prompts is None:
                raise ValueError("coupled prompts map text prompts onto visual prompts: they need both")
            self.coupling = nn.ModuleList(
                _LowRankMap(self.text_prompts.shape[1], visual.conv1.out_channels, config.coupling_rank, gen)
                for _ in self.visual_layers).to(device)

        self.text_block_adapters = None
        if config.text_block_adapter_rank > 0:
            if self._text is None:
                raise PromptsUnsupported("this backbone's text tower does not accept block adapters")
            width = self._text.token_embedding.weight.shape[1]
            self.text_block_adapters = nn.ModuleList(
                _BlockAdapter(width, config.text_block_adapter_rank, gen)
                for _ in self._text.transformer.resblocks).to(device)

        self.word_ids, self.word_deltas = None, None
        if config.word_tokens > 0:
            if self._text is None:
                raise PromptsUnsupported("this backbone's text tower does not accept word offsets")
            width = self._text.token_embedding.weight.shape[1]
            self.word_ids = torch.full((config.word_tokens,), -1, dtype=torch.long, device=device)
            self.word_deltas = nn.Parameter(torch.zeros(config.word_tokens, width, device=device))

        self.residual: nn.ModuleDict | None = None
        if config.residual_rank > 0:
            dim = int(self._projection_dim(model))
            self.residual = nn.ModuleDict({side: _LowRankResidual(dim, config.residual_rank, gen) for side in ("image", "text")})
            self.residual.to(device)
        # 1.0: the adapted embedding alone; set by training from held-out pairs.
        self.adapted_weight: torch.Tensor | None = torch.ones(()) if config.zero_shot_mix else None

    @staticmethod
    def _projection_dim(model: Any) -> int:
        with torch.no_grad():
            proj = getattr(model.visual, "proj", None)
            if isinstance(proj, torch.Tensor):
                return proj.shape[1]
            return int(model.visual.output_dim)

    @classmethod
    def from_backbone(cls, backbone, config: PromptConfig) -> PromptedCLIP:
        return cls(backbone.model, config, backbone.tokenizer, backbone.identity)

    # ---------------------------------------------------------------- parameters
    def _init_text(self, M: int, gen: torch.Generator) -> torch.Tensor:
        weight = self._text.token_embedding.weight
        init = torch.randn(M, weight.shape[1], generator=gen) * 0.02  # CoOp's random init
        phrase = self.config.text_init
        if phrase and phrase != "random":
            if self.tokenizer is None:
                raise ValueError("a tokenizer is needed to initialise text prompts from a phrase")
            ids = self.tokenizer([phrase])[0]
            end = int(ids.argmax())  # the end-of-text token: the phrase lies strictly between
            ids = ids[1:end][:M].to(weight.device)
            with torch.no_grad():
                init[: len(ids)] = self._text.token_embedding(ids).float().cpu()
        return init

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the learned tensors, float32 on the CPU (what an artifact stores).

        Always copies: on the CPU ``.float().cpu()`` of a float32 parameter is the parameter itself,
        and a snapshot that aliased it (early stopping's best epoch) would follow every later step.
        """
        out = {}
        if self.text_prompts is not None:
            out["text_prompts"] = _copy(self.text_prompts)
        if self.text_deep_prompts is not None:
            out["text_deep_prompts"] = _copy(self.text_deep_prompts)
        if self.visual_prompts is not None:
            out["visual_prompts"] = _copy(self.visual_prompts)
        if self.word_deltas is not None:
            assert self.word_ids is not None
            out["word_ids"] = self.word_ids.detach().to("cpu", copy=True)
            out["word_deltas"] = _copy(self.word_deltas)
        for prefix, module in (("block_adapters", self.block_adapters), ("coupling", self.coupling),
                               ("text_block_adapters", self.text_block_adapters), ("residual", self.residual)):
            if module is not None:
                for name, value in module.state_dict().items():
                    out[f"{prefix}.{name}"] = _copy(value)
        if self.adapted_weight is not None:
            out["adapted_weight"] = _copy(self.adapted_weight.reshape(1))
        return out

    def load_prompt_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.prompt_state_dict()
        if set(tensors) != set(expected):
            raise ValueError(f"prompt tensors {sorted(tensors)} != expected {sorted(expected)}")
        for name, value in tensors.items():
            if tuple(value.shape) != tuple(expected[name].shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} != expected {tuple(expected[name].shape)}")
        for name, value in tensors.items():
            if name == "word_ids":
                self.set_words(value)
            else:
                self._set_tensor(name, value)

    def _set_tensor(self, name: str, value: torch.Tensor) -> None:
        with torch.no_grad():
            if name == "adapted_weight":
                self.adapted_weight = value.float().reshape(()).clone()
            else:  # a parameter of this module or of a submodule ("residual.image.up", "block_adapters.0.down")
                self.get_parameter(name).copy_(value)

    def set_words(self, ids: torch.Tensor | Sequence[int]) -> None:
        """The token ids whose embeddings the rows of ``word_deltas`` offset, in row order.

        Fewer ids than rows leave the last rows unused. Ids must be distinct token ids of this
        tower's vocabulary (a file from elsewhere is checked, not trusted)."""
        if self.word_ids is None:
            raise ValueError("this adapter was built without word offsets (word_tokens=0)")
        ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
        used = ids[ids >= 0]
        vocab = self._text.token_embedding.weight.shape[0]
        if len(ids) > len(self.word_ids) or (ids < -1).any() or (used >= vocab).any():
            raise ValueError(f"word ids must be at most {len(self.word_ids)} token ids in [0, {vocab}) or -1")
        if len(used.unique()) != len(used) or (len(used) and (ids[: len(used)] < 0).any()):
            raise ValueError("word ids must be distinct, with the unused rows (-1) last")
        full = torch.full((len(self.word_ids),), -1, dtype=torch.long)
        full[: len(ids)] = ids
        self.word_ids = full.to(self.word_ids.device)

    def words(self) -> list[str]:
        """The word table's tokens as text, most used first (a rare word may be split into pieces)."""
        decode = getattr(self.tokenizer, "decode", None)
        if self.word_ids is None or decode is None:
            return []
        return [decode([i]).strip() for i in self.word_ids.tolist() if i >= 0]

    def set_adapted_weight(self, weight: float) -> None:
        """The share of the adapted embedding in what ``encode_*`` return (needs ``zero_shot_mix``)."""
        if self.adapted_weight is None:
            raise ValueError("this adapter was built without zero_shot_mix")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"adapted weight {weight} outside [0, 1]")
        self.adapted_weight = torch.tensor(float(weight))

    def num_parameters(self) -> int:
        """Learned numbers: the tensors trained plus the mixing weight (word ids are chosen, not learned)."""
        return sum(p.numel() for p in self.parameters()) + (1 if self.adapted_weight is not None else 0)

    def prompt_shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.prompt_state_dict().items()}

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def changes_text(self) -> bool:
        """Whether a caption's features differ from zero-shot before the output head."""
        return self.text_prompts is not None or self.word_deltas is not None or self.text_block_adapters is not None

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize to ``context_length - M``: the prompts take the remaining positions."""
        if self.tokenizer is None:
            raise ValueError("PromptedCLIP was built without a tokenizer; pass token ids instead")
        length = self.context_length - self.config.text_tokens if self._text else None
        return self.tokenizer(list(texts), context_length=length).to(self.device)

    def fit_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Shorten full-context token rows to leave M positions, keeping the end-of-text token."""
        M = self.config.text_tokens
        keep = self.context_length - M
        if M == 0 or tokens.shape[1] <= keep:
            return tokens
        eot_pos = self._eot_positions(tokens)
        eot_ids = tokens[torch.arange(len(tokens), device=tokens.device), eot_pos]
        out = tokens[:, :keep].clone()
        cut = eot_pos >= keep  # captions that no longer fit: end them at the last kept position
        out[cut, keep - 1] = eot_ids[cut]
        return out

    def trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the padding columns after the longest row's end-of-text token.

        Exact for a causal tower pooled at the end-of-text token: no kept position attends to a
        later one, so the columns cut never reach the pooled vector. A ~10-token query then costs
        a tenth of a 77-position pass instead of all of it.
        """
        parts = self._text
        if parts.attn_mask is None or parts.pool_type not in ("argmax", "eos") or tokens.shape[0] == 0:
            return tokens
        return tokens[:, : int(self._eot_positions(tokens).max()) + 1]

    def _eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._text.pool_type == "eos" and self._text.eos_id is not None:
            return (tokens == self._text.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # CLIP's BPE: end-of-text is the largest id

    def encode_text(self, text: Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Unit text embeddings (``normalize`` is kept for open_clip's signature: an adapter's
        residual map and zero-shot mixing are defined on unit vectors, so the output always is one)."""
        tokens = self.tokenize(text) if not isinstance(text, torch.Tensor) else text.to(self.device)
        adapted = self.text_head(self.text_features(tokens))
        if self._mixing():
            adapted = self._mix(adapted, self.text_features(tokens, prompts=False))
        return adapted

    def text_features(self, tokens: torch.Tensor, prompts: bool = True) -> torch.Tensor:
        """Projected (unnormalised) features of token rows of any length up to the context."""
        tokens = tokens.to(self.device)
        if self._text is None:  # an HF tower (only reachable with M == 0): the backbone's own path
            return self.clip.encode_text(tokens, normalize=False)
        return self.text_tower(self.trim_padding(self.fit_tokens(tokens)), prompts=prompts)

    def text_tower(self, tokens: torch.Tensor, prompts: bool = True) -> torch.Tensor:
        """Projected (unnormalised) text features of fitted, trimmed token rows; ``prompts=False``
        gives the zero-shot features of the same rows."""
        parts = self._text
        cast = parts.transformer.get_cast_dtype()
        x = parts.token_embedding(tokens)
        if prompts and self.word_deltas is not None:
            x = x + self.word_offsets(tokens)
        x = x.to(cast)
        pool_tokens = tokens
        M = 0
        if prompts and self.text_prompts is not None:
            B, M = x.shape[0], self.text_prompts.shape[0]
            first = self.text_prompts.to(cast).unsqueeze(0).expand(B, -1, -1)
            x = torch.cat([x[:, :1], first, x[:, 1:]], dim=1)
            # The same splice on the ids moves the end-of-text position by M for the pooling.
            filler = tokens.new_full((B, M), _PROMPT_TOKEN_ID)
            pool_tokens = torch.cat([tokens[:, :1], filler, tokens[:, 1:]], dim=1)
        L = x.shape[1]
        x = x + parts.positional_embedding[:L].to(cast)
        mask = parts.attn_mask[:L, :L] if parts.attn_mask is not None else None
        deep = M > 0 and self.text_deep_prompts is not None
        if deep or (prompts and self.text_block_adapters is not None):
            x = self._run_text_blocks(x, mask, cast, deep=deep, adapters=prompts)
        else:
            x = parts.transformer(x, attn_mask=mask)
        return parts.head(x, pool_tokens)

    def word_offsets(self, tokens: torch.Tensor) -> torch.Tensor:
        """The learned offset of every token position (zero for a token outside the table)."""
        assert self.word_ids is not None and self.word_deltas is not None
        ids = self.word_ids.to(tokens.device)
        order = torch.argsort(ids)
        sorted_ids = ids[order]
        slot = torch.searchsorted(sorted_ids, tokens.contiguous()).clamp(max=len(ids) - 1)
        found = (sorted_ids[slot] == tokens) & (tokens >= 0)  # -1: unused rows, prompt positions
        rows = self.word_deltas[order[slot]]
        return rows * found.unsqueeze(-1).to(rows.dtype)

    def _run_text_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, cast: torch.dtype,
                         deep: bool, adapters: bool) -> torch.Tensor:
        """The text blocks one by one: ``deep`` puts each block's own prompts in the prompt
        positions; ``adapters`` adds each block's bottleneck adapter (if any) to its output."""
        transformer = self._text.transformer
        batch_first = getattr(transformer, "batch_first", True)
        deep_prompts = None
        if deep:
            assert self.text_deep_prompts is not None and self.text_prompts is not None
            deep_prompts, M = self.text_deep_prompts, self.text_prompts.shape[0]
        for index, block in enumerate(transformer.resblocks):
            if deep_prompts is not None and index > 0:  # replace the prompt positions with this block's own prompts
                fresh = deep_prompts[index - 1].to(cast).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], fresh, x[:, 1 + M :]], dim=1)
            out = block(x, attn_mask=mask) if batch_first else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
            if adapters and self.text_block_adapters is not None:
                out = out + self.text_block_adapters[index](x)
            x = out
        return x

    def text_head(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> the adapted unit embedding (residual map when present)."""
        return self._head("text", features)

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._head("image", features)

    def _head(self, side: str, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features.float(), dim=-1)
        if self.residual is not None:
            x = F.normalize(self.residual[side](x), dim=-1)
        return x

    def _mixing(self) -> bool:
        return self.adapted_weight is not None and float(self.adapted_weight) < 1.0

    def _mix(self, adapted: torch.Tensor, zero_features: torch.Tensor) -> torch.Tensor:
        w = float(self.adapted_weight)  # type: ignore[arg-type]
        return F.normalize(w * adapted + (1.0 - w) * F.normalize(zero_features.float(), dim=-1), dim=-1)

    def mix_embeddings(self, adapted: torch.Tensor, zero_shot: torch.Tensor, weight: float) -> torch.Tensor:
        """What ``encode_*`` return for unit embeddings ``adapted`` / ``zero_shot`` at ``weight``."""
        return F.normalize(weight * adapted.float() + (1.0 - weight) * zero_shot.float(), dim=-1)

    # ---------------------------------------------------------------- image
    @property
    def image_prefix_layer(self) -> int:
        """Blocks before this one see no prompt: their output can be cached per image."""
        return self.visual_layers[0] if self.visual_layers else 0

    def image_prefix(self, pixels: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Token activations (batch first) entering block ``upto`` (default: the first prompted one)."""
        visual = self.clip.visual
        upto = self.image_prefix_layer if upto is None else upto
        x = visual._embeds(pixels.to(self.device))
        for block in visual.transformer.resblocks[:upto]:
            x = self._run_block(block, x)
        return x

    def encode_image_from_prefix(
        self, prefix: torch.Tensor, normalize: bool = True, start: int | None = None
    ) -> torch.Tensor:
        """Finish the image tower from activations entering block ``start`` (a unit embedding)."""
        adapted = self.image_head(self.image_tower_from_prefix(prefix, start))
        if self._mixing():
            adapted = self._mix(adapted, self.image_tower_from_prefix(prefix, start, prompts=False))
        return adapted

    def image_tower_from_prefix(self, prefix: torch.Tensor, start: int | None = None, prompts: bool = True) -> torch.Tensor:
        """Projected (unnormalised) image features; ``prompts=False``: zero-shot from the same prefix."""
        visual = self.clip.visual
        start = self.image_prefix_layer if start is None else start
        if start > self.image_prefix_layer:
            raise ValueError(f"prefix at block {start} is past the first prompted block {self.image_prefix_layer}")
        x = prefix.to(self.device)
        n_image = x.shape[1]
        blocks = visual.transformer.resblocks
        for index in range(start, len(blocks)):
            prompted_block = prompts and index in self.visual_layers
            if prompted_block:
                x = torch.cat([x[:, :n_image], self._visual_prompt(index, x)], dim=1)
            out = self._run_block(blocks[index], x)
            if prompted_block and self.block_adapters is not None:
                out = out + self.block_adapters[self.visual_layers.index(index)](x)
            x = out
        x = x[:, :n_image]  # prompts never reach pooling
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def image_tower(self, pixels: torch.Tensor, prompts: bool = True) -> torch.Tensor:
        """Projected (unnormalised) image features of pixels, with or without the visual prompts."""
        if not self.vision_prompt_capable:
            return self.clip.encode_image(pixels.to(self.device), normalize=False)
        return self.image_tower_from_prefix(self.image_prefix(pixels), prompts=prompts)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if not self.vision_prompt_capable:
            adapted = self.image_head(self.clip.encode_image(pixels.to(self.device), normalize=False))
            if self._mixing():
                adapted = self._mix(adapted, self.clip.encode_image(pixels.to(self.device), normalize=False))
            return adapted
        return self.encode_image_from_prefix(self.image_prefix(pixels), normalize=normalize)

    def _visual_prompt(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        assert self.visual_prompts is not None
        k = self.visual_layers.index(layer)
        prompts = self.visual_prompts[k].to(x.dtype)
        if self.coupling is not None:
            coupled = self.coupling[k](self._text_prompts_at(layer).to(x.dtype))[: prompts.shape[0]]
            prompts = torch.cat([prompts[: len(coupled)] + coupled, prompts[len(coupled) :]])
        if layer == 0:
            # Image tokens went through ln_pre inside _embeds; the input prompts get the same
            # (token-wise) norm, as if they had been joined before it. Deeper prompts are written
            # straight into the residual stream, as in VPT-deep.
            prompts = self.clip.visual.ln_pre(prompts)
        return prompts.unsqueeze(0).expand(x.shape[0], -1, -1)

    def _text_prompts_at(self, block: int) -> torch.Tensor:
        """The text prompts entering text block ``block`` (the last block's for a deeper image tower)."""
        assert self.text_prompts is not None
        if self.text_deep_prompts is None or block == 0:
            return self.text_prompts
        return self.text_deep_prompts[min(block, len(self.text_deep_prompts)) - 1]

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.clip.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def forward(self, pixels: torch.Tensor, text: torch.Tensor | Sequence[str]):
        return self.encode_image(pixels), self.encode_text(text)

    def extra_repr(self) -> str:
        return f"{self.config}, visual_layers={self.visual_layers}, params={self.num_parameters()}"
