"""The search objective computed through the PyTorch reference (``evaluate --backend torch``):
the same targets, the same ``score_image``/``aggregate``, sam3's own forward passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlx_alias.image import load_image, preprocess
from mlx_alias.search.objective import MaskTarget, ObjectiveConfig
from mlx_alias.search.scorer import ExactScorer

from . import runners
from .parity import device_of, nchw


class TorchScorer(ExactScorer):
    def __init__(
        self,
        reference: torch.nn.Module,
        image_paths: list[Path],
        targets: list[MaskTarget],
        config: ObjectiveConfig = ObjectiveConfig(),
        pairs_per_batch: int = 8,
        image_size: int = 1008,
    ):
        super().__init__(targets, config, pairs_per_batch)
        self.reference = reference
        pixels = np.stack([preprocess(load_image(p), image_size) for p in image_paths])
        with torch.no_grad():
            self.features = runners.image_features(reference, nchw(pixels).to(device_of(reference)))

    def _encode(self, ids: np.ndarray) -> runners.ReferenceText:
        with torch.no_grad():
            return runners.text_features_from_ids(self.reference, torch.from_numpy(ids))

    def _ground(
        self, text: runners.ReferenceText, candidates: list[int], images: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        which = torch.tensor(candidates)
        chunk = runners.ReferenceText(text.memory[which], text.padding[which])
        with torch.no_grad():
            out = runners.ground(self.reference, self.features, chunk, torch.tensor(images))
        return out["scores"].float().cpu().numpy(), out["pred_masks"].float().cpu().numpy()
