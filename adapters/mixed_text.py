"""Texts of many adapters in one forward pass of the frozen text tower.

Per-tenant adapter serving for LLMs (S-LoRA, Punica, LoRAX) batches requests of different adapters
through one base model. Textual prompts make this simple here: they are per-row *inputs* (M vectors
spliced after the start token), so rows of different adapters, and zero-shot rows, share one pass
of open_clip's text blocks. Each adapter's output head (residual map, zero-shot mixing weight) is
then applied to its own rows only.

What differs per row, and how one batch holds it:
- the number of prompt vectors M: each adapter tokenizes to ``context_length - M`` (as
  ``PromptedCLIP.tokenize`` does), so every spliced row has the full context length; the
  positional embedding and the causal mask are per position, the pooling reads each row's own
  end-of-text position, so rows of different M never see each other's layout;
- deep text prompts: before every later block, each such adapter's fresh prompts overwrite its
  own rows' prompt positions (the block loop ``PromptedCLIP`` runs for one adapter, row-wise);
- text block adapters: after every block, each such adapter adds its bottleneck's output to its
  own rows (again ``PromptedCLIP``'s block loop, row-wise);
- word offsets: each adapter adds its own to its own rows' token embeddings;
- zero-shot mixing: the zero-shot features of an adapter's rows (its tokens, no prompts) are
  extra rows of the same pass.

The open_clip modules are called, never copied; no hook is registered on them, because the
backbone is shared with training threads that must not see another request's prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adapters.prompted import PromptedCLIP, _text_parts

_PROMPT_TOKEN_ID = -1  # as in prompted.py: never the argmax, never an end-of-text id


class NotMixable(ValueError):
    """The backbone's text tower takes no spliced prompts (an HF encoder): encode per adapter."""


@dataclass
class _Rows:
    """Where one group's rows sit in the batch."""

    adapted: slice  # rows with the adapter's prompts (or the zero-shot rows of a zero-shot group)
    zero_shot: slice | None  # the same tokens without prompts (only for mixing adapters with prompts)


def _mixing_weight(prompted: PromptedCLIP) -> float | None:
    weight = prompted.adapted_weight
    return float(weight) if weight is not None and float(weight) < 1.0 else None


class MixedTextEncoder:
    """Encodes groups ``(adapter or None for zero-shot, texts)`` of one backbone in one pass."""

    def __init__(self, model: nn.Module, tokenizer):
        parts = _text_parts(model)
        if parts is None:
            raise NotMixable("this backbone's text tower does not accept spliced prompts")
        self.model = model
        self.parts = parts
        self.tokenizer = tokenizer
        self.context_length = int(parts.positional_embedding.shape[0])

    @classmethod
    def for_backbone(cls, backbone) -> MixedTextEncoder:
        return cls(backbone.model, backbone.tokenizer)

    @property
    def device(self) -> torch.device:
        return self.parts.positional_embedding.device

    def _prompts(self, prompted: PromptedCLIP | None) -> int:
        if prompted is None or prompted.text_prompts is None:
            return 0
        if prompted.clip is not self.model:
            raise ValueError("an adapter of another backbone cannot join this batch")
        return int(prompted.text_prompts.shape[0])

    @torch.inference_mode()
    def encode(self, groups: Sequence[tuple[PromptedCLIP | None, Sequence[str]]]) -> list[torch.Tensor]:
        """Unit float32 embeddings on the CPU, one tensor per group, rows in input order."""
        ids: list[torch.Tensor] = []  # (n, context_length) token rows, prompt positions as the sentinel
        layout: list[_Rows] = []
        row = 0
        for prompted, texts in groups:
            M = self._prompts(prompted)
            tokens = self.tokenizer(list(texts), context_length=self.context_length - M).to(self.device)
            n = tokens.shape[0]
            if M:
                filler = tokens.new_full((n, M), _PROMPT_TOKEN_ID)
                ids.append(torch.cat([tokens[:, :1], filler, tokens[:, 1:]], dim=1))
            else:
                ids.append(tokens)
            adapted = slice(row, row + n)
            row += n
            zero_shot = None
            if prompted is not None and prompted.changes_text and _mixing_weight(prompted) is not None:
                pad = tokens.new_zeros((n, M))  # after the end-of-text token: never pooled, never attended to
                ids.append(torch.cat([tokens, pad], dim=1))
                zero_shot = slice(row, row + n)
                row += n
            layout.append(_Rows(adapted, zero_shot))
        if row == 0:
            dim = int(self.parts.positional_embedding.shape[1])
            return [torch.zeros((0, dim)) for _ in groups]
        features = self._tower(torch.cat(ids), list(zip([g[0] for g in groups], layout, strict=True)))
        return [self._head(prompted, rows, features).cpu() for (prompted, _), rows in zip(groups, layout, strict=True)]

    def _tower(self, ids: torch.Tensor, placed: list[tuple[PromptedCLIP | None, _Rows]]) -> torch.Tensor:
        parts = self.parts
        cast = parts.transformer.get_cast_dtype()
        if parts.attn_mask is not None and parts.pool_type in ("argmax", "eos"):
            # Causal and pooled at the end-of-text token: columns after the longest row are never read.
            ids = ids[:, : int(self._eot_positions(ids).max()) + 1]
        x = parts.token_embedding(ids.clamp(min=0))
        for p, own in placed:  # each adapter's word offsets, on its own (adapted) rows only
            if p is not None and p.word_deltas is not None:
                x[own.adapted] = x[own.adapted] + p.word_offsets(ids[own.adapted])
        x = x.to(cast)
        # (first prompts, deep prompts or None, rows) of every adapter with text prompts
        prompted_rows = [(p.text_prompts, p.text_deep_prompts, rows.adapted) for p, rows in placed
                         if p is not None and p.text_prompts is not None]
        for first, _, rows in prompted_rows:
            x[rows, 1 : 1 + first.shape[0]] = first.to(cast)
        L = x.shape[1]
        x = x + parts.positional_embedding[:L].to(cast)
        mask = parts.attn_mask[:L, :L] if parts.attn_mask is not None else None
        deep = [(d, rows) for _, d, rows in prompted_rows if d is not None]
        block_adapted = [(p.text_block_adapters, rows.adapted) for p, rows in placed
                         if p is not None and p.text_block_adapters is not None]
        if deep or block_adapted:
            batch_first = getattr(parts.transformer, "batch_first", True)
            for index, block in enumerate(parts.transformer.resblocks):
                if index > 0:  # each deep adapter's own prompts for this block, on its rows only
                    for prompts, rows in deep:
                        x[rows, 1 : 1 + prompts.shape[1]] = prompts[index - 1].to(cast)
                out = block(x, attn_mask=mask) if batch_first else block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
                for adapters, rows in block_adapted:  # each adapter's own block adapter, on its rows only
                    out[rows] = out[rows] + adapters[index](x[rows])
                x = out
        else:
            x = parts.transformer(x, attn_mask=mask)
        return parts.head(x, ids)

    def _eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self.parts.pool_type == "eos" and self.parts.eos_id is not None:
            return (ids == self.parts.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)  # CLIP's BPE: end-of-text is the largest id

    @staticmethod
    def _head(prompted: PromptedCLIP | None, rows: _Rows, features: torch.Tensor) -> torch.Tensor:
        if prompted is None:
            return F.normalize(features[rows.adapted].float(), dim=-1)
        adapted = prompted.text_head(features[rows.adapted])
        weight = _mixing_weight(prompted)
        if weight is None:
            return adapted
        zero = features[rows.zero_shot] if rows.zero_shot is not None else features[rows.adapted]
        return prompted.mix_embeddings(adapted, F.normalize(zero.float(), dim=-1), weight)
