"""Caching of frozen computation for prompt training and evaluation.

Every training step needs embeddings of a batch of images and captions, but much of that work
does not depend on the prompts:

- a side without prompts is a constant: text-only training encodes the images once, visual-only
  training encodes the captions once;
- images are preprocessed to tensors once, never per epoch;
- the image tower's blocks before the first prompted block (``PromptedCLIP.image_prefix_layer``)
  see only image tokens, so their output is cached per image and each step runs only the
  remaining blocks.

``ImageSide`` and ``TextSide`` hide which of these applies; the caches live on the CPU and each
batch moves to the model's device, so the memory they take is host memory. ``FrozenWork`` holds
what every adapter trained on the same items shares (``method: "auto"`` trains several), so a job
computes it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from .prompted import PromptConfig, PromptedCLIP


def preprocess_images(backbone, images: Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
    """The backbone's preprocessing applied once: a CPU tensor in the backbone's dtype."""
    out = [
        backbone.image_tensor(images[start : start + batch_size]).cpu()
        for start in range(0, len(images), batch_size)
    ]
    size = backbone.identity.image_size
    return torch.cat(out) if out else torch.empty(0, 3, size, size, dtype=backbone.dtype)


def _batched(fn, data: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [fn(data[start : start + batch_size].to(device)).cpu() for start in range(0, len(data), batch_size)]
    return torch.cat(out)


class ImageSide:
    """Image embeddings for training indices, computing each step only what the prompts change.

    Embeddings are the adapted ones without zero-shot mixing (training never mixes; the weight is
    chosen afterwards). Without visual prompts the tower's output is a constant, cached once; the
    residual map (when present) is applied per call, so it still trains.
    """

    def __init__(
        self,
        prompted: PromptedCLIP,
        pixels: torch.Tensor,
        cache: bool = True,
        batch_size: int = 64,
        prefix: torch.Tensor | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        """``prefix``: these pixels' activations entering ``prompted.image_prefix_layer``, when known.
        ``augment``: applied to each batch's pixels (training), so nothing is cached."""
        self.prompted = prompted
        self.device = prompted.device
        self.augment = augment
        self.frozen = prompted.visual_prompts is None and augment is None
        self.pixels = pixels
        self.prefix = None
        self.features = None
        with torch.no_grad():
            if self.frozen:
                self.features = _batched(prompted.image_tower, pixels, batch_size, self.device)
            elif cache and augment is None:
                self.prefix = prefix if prefix is not None else _batched(prompted.image_prefix, pixels, batch_size, self.device)

    @property
    def cached_layer(self) -> int | None:
        """Blocks already run on the cached activations, None when pixels are re-encoded."""
        return self.prompted.image_prefix_layer if self.prefix is not None else None

    def __len__(self) -> int:
        return len(self.pixels)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        head = self.prompted.image_head
        if self.features is not None:
            return head(self.features[index].to(self.device))
        if self.prefix is not None:
            return head(self.prompted.image_tower_from_prefix(self.prefix[index].to(self.device)))
        pixels = self.pixels[index]
        if self.augment is not None:
            pixels = self.augment(pixels)
        return head(self.prompted.image_tower(pixels.to(self.device)))

    def all(self, batch_size: int = 256) -> torch.Tensor:
        """Every embedding without gradients (for evaluation), on the CPU."""
        with torch.no_grad():
            return _batched(lambda i: self(i), torch.arange(len(self)), batch_size, torch.device("cpu"))


class TextSide:
    """Caption embeddings by caption index; captions are tokenized once, encoded once if frozen."""

    def __init__(self, prompted: PromptedCLIP, captions: Sequence[str], batch_size: int = 256):
        self.prompted = prompted
        self.device = prompted.device
        self.frozen = not prompted.changes_text
        self.tokens = prompted.tokenize(list(captions)).cpu() if captions else None
        self.features = None
        if self.frozen and self.tokens is not None:
            with torch.no_grad():
                self.features = _batched(prompted.text_features, self.tokens, batch_size, self.device)

    def __len__(self) -> int:
        return 0 if self.tokens is None else len(self.tokens)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            return self.prompted.text_head(self.features[index].to(self.device))
        assert self.tokens is not None
        return self.prompted.text_head(self.prompted.text_features(self.tokens[index].to(self.device)))

    def all(self, batch_size: int = 256) -> torch.Tensor:
        with torch.no_grad():
            return _batched(lambda i: self(i), torch.arange(len(self)), batch_size, torch.device("cpu"))


class FrozenWork:
    """What does not depend on the adapter, for one set of training and held-out items.

    Pixels, the zero-shot embeddings of the held-out pairs and the training images' activations
    before the first prompted block are the same for every adapter trained on these items, so
    candidates that share this object compute them once. Parts no adapter asks for are not computed.
    """

    def __init__(self, backbone, train_images: Sequence[Image.Image], val_images: Sequence[Image.Image],
                 val_captions: Sequence[str]):
        self.train_pixels = preprocess_images(backbone, train_images)
        self.val_pixels = preprocess_images(backbone, val_images)
        self.zero = PromptedCLIP.from_backbone(backbone, PromptConfig())
        self.zero_val_text = TextSide(self.zero, val_captions).all()
        self.zero_val_image = ImageSide(self.zero, self.val_pixels).all()
        self._zero_train_images: torch.Tensor | None = None
        self._prefixes: dict[int, torch.Tensor] = {}

    def zero_train_images(self) -> torch.Tensor:
        """Zero-shot embeddings of the training images (for mined negatives and consistency terms)."""
        if self._zero_train_images is None:
            self._zero_train_images = ImageSide(self.zero, self.train_pixels).all()
        return self._zero_train_images

    def train_images(self, prompted: PromptedCLIP, cache: bool = True,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ImageSide:
        """The training images for ``prompted``, reusing activations cached for an earlier adapter."""
        layer = prompted.image_prefix_layer
        side = ImageSide(prompted, self.train_pixels, cache=cache, prefix=self._prefixes.get(layer), augment=augment)
        if side.prefix is not None:
            self._prefixes[layer] = side.prefix
        return side


class PixelAugment:
    """Changes to a batch of preprocessed training images that keep their captions true, drawn per step.

    Captions name colours, positions, sizes and textures, so none of those may change: a brightness
    gain in ``1 ± gain``, a shift of up to ``shift`` pixels per image (edges repeated; far less than
    what separates "on the left" from "in the centre") and Gaussian noise of ``noise`` (on a 0..1
    scale). Flips, crops and colour jitter would each falsify some caption.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], seed: int,
                 gain: float = 0.1, shift: int = 2, noise: float = 0.02):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.gain, self.shift, self.noise = gain, shift, noise
        self.gen = torch.Generator().manual_seed(seed)

    @classmethod
    def for_backbone(cls, backbone, seed: int) -> PixelAugment:
        visual = backbone.model.visual
        return cls(visual.image_mean, visual.image_std, seed)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixels.shape
        x = pixels.detach().cpu().float() * self.std + self.mean
        x = x * (1 + (torch.rand(n, 1, 1, 1, generator=self.gen) * 2 - 1) * self.gain)
        s = self.shift
        padded = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=self.gen).tolist()
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
        x = x + torch.randn(x.shape, generator=self.gen) * self.noise
        return ((x.clamp(0, 1) - self.mean) / self.std).to(pixels.dtype)
