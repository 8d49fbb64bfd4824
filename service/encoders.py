"""Turn images and texts into vectors of one space: the zero-shot backbone, or backbone + adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from adapters.backbone import Backbone
from service.vocabulary import ZERO_SHOT


class Encoder(Protocol):
    space: str

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class ZeroShotEncoder:
    """The frozen backbone as it is."""

    space = ZERO_SHOT
    text_adapter = None  # joins mixed-adapter text batches as zero-shot rows (service.batching)

    def __init__(self, backbone: Backbone, batch_size: int):
        self.backbone = backbone
        self.batch_size = batch_size

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.backbone.encode_images(images, batch_size=self.batch_size).numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.backbone.encode_texts(texts).numpy()
