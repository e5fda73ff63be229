"""The image score shared by the methods: the maximum of the mean-filtered anomaly map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draem.errors import DraemError

IMAGE_SCORE_WINDOW = 21


def check_window(window: int) -> int:
    """A score window must be a positive odd number of pixels, so that it centres on a pixel."""
    if window < 1 or window % 2 == 0:
        raise DraemError(f"--score-window {window}: must be a positive odd number (the paper: 21)")
    return window


def image_score(anomaly_map: torch.Tensor, valid: torch.Tensor | None = None,
                window: int = IMAGE_SCORE_WINDOW) -> torch.Tensor:
    """Max of the window x window mean-filtered map (B, H, W); padding (not `valid`) counts as 0."""
    if valid is not None:
        anomaly_map = anomaly_map * valid
    smoothed = F.avg_pool2d(anomaly_map[:, None], window, stride=1, padding=window // 2)[:, 0]
    if valid is not None:
        smoothed = smoothed.masked_fill(~valid, float("-inf"))
    return smoothed.flatten(1).amax(dim=1)


def mean_filter(maps: torch.Tensor, window: int) -> torch.Tensor:
    """Smooth maps (B, H, W) with a window x window mean filter of the same output size."""
    return F.avg_pool2d(maps[:, None], window, stride=1, padding=window // 2, count_include_pad=False)[:, 0]
