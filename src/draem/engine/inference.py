"""Run a trained model over batches of images: the one inference path of test, predict and calibrate."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from draem.engine.devices import autocast
from draem.engine.run import LoadedModel
from draem.models.draem import anomaly_map_and_score


@dataclass
class Predictor:
    """A loaded model placed on a device with a precision, turning image batches into maps and scores."""

    loaded: LoadedModel
    device: torch.device
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.model = self.loaded.model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) and image scores (B,) for fitted RGB images (B, 3, S, S) in [0, 1]."""
        images = images.to(self.device, non_blocking=True)
        if self.loaded.info.channel_order == "BGR":
            images = images.flip(1)
        with autocast(self.device, self.precision):
            _, logits = self.model(images)
        if valid is not None:
            valid = valid.to(self.device)
        return anomaly_map_and_score(logits, valid)

    def run(self, batches: Iterable[dict[str, torch.Tensor]]
            ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Yield (batch, maps, scores) on the CPU for each batch of a loader."""
        for batch in batches:
            maps, scores = self(batch["image"], batch.get("valid"))
            yield batch, maps.float().cpu(), scores.float().cpu()
