"""The quality benchmark's quick core: dual prompts beat zero-shot on held-out test pairs.

Runs ``bench.quality.quick_core`` (the core of ``python -m bench.quality --quick``) with the
shipped miniature-world checkpoint: the quick shift ``style-colour-cast`` (``style``'s candle-lit
colour cast and templates with the pretraining vocabulary, no grain; why this one and not the
full ``style`` or ``fine_grained`` shift: on the shipped backbone those leave no headroom at this
size, see docs/bench/quality.md), 400 train / 150 val / 300 test pairs from independent world
seeds, dual prompts with the quick recipe, one seed. Test pairs are never used for training or
early stopping. Nothing here asserts on time (it takes well under a minute on 2 idle cores).

The margins were set from the quick core with seeds 0, 1 and 2 on the shipped checkpoint
(sha256 f09bb8c4...), 300 test images / 456 test captions:

    zero-shot            t2i R@1 1.97 %   R@10 17.8 %
    dual, seed 0         t2i R@1 3.73 %   R@10 27.9 %
    dual, seed 1         t2i R@1 3.73 %   R@10 25.9 %
    dual, seed 2         t2i R@1 4.61 %   R@10 27.6 %

so the smallest gains were +1.75 points R@1 (1.9x) and +8.1 points R@10. The test asks for
+1.0 point and 1.5x at R@1 and +5 points at R@10: comfortably inside every seed's gain, far
above what an adapter that learned nothing would show (it would sit at zero-shot or below:
inserting untrained prompts lowers recall).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from adapters.backbone import OFFLINE_CHECKPOINT

pytestmark = pytest.mark.skipif(
    not OFFLINE_CHECKPOINT.exists(),
    reason=f"shipped backbone checkpoint {OFFLINE_CHECKPOINT} is missing: prompts on a random model prove nothing",
)

SEED = 0
MARGIN_R1 = 0.01  # absolute, text->image R@1
RATIO_R1 = 1.5
MARGIN_R10 = 0.05


def test_dual_prompts_beat_zero_shot_on_held_out_pairs():
    from adapters.backbone import load_backbone
    from bench.quality import QUICK_SHIFT, quick_core

    backbone = load_backbone()
    core = quick_core(backbone, QUICK_SHIFT, seeds=(SEED,))
    zero, dual = core["zero_shot"], core["dual"][0]
    assert dual["n_images"] == zero["n_images"] == 300
    summary = (f"zero-shot R@1 {zero['t2i_r1']:.4f} R@10 {zero['t2i_r10']:.4f}; "
               f"dual R@1 {dual['t2i_r1']:.4f} R@10 {dual['t2i_r10']:.4f}")
    assert dual["t2i_r1"] >= zero["t2i_r1"] + MARGIN_R1, summary
    assert dual["t2i_r1"] >= RATIO_R1 * zero["t2i_r1"], summary
    assert dual["t2i_r10"] >= zero["t2i_r10"] + MARGIN_R10, summary
