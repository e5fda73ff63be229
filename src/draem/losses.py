"""DRAEM's training losses: SSIM, focal loss on softmax probabilities, and their sum with L2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps centred on the middle of `size` samples."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
             padding: str = "same") -> torch.Tensor:
    """Per-channel SSIM map of two (B, C, H, W) batches with an 11x11 Gaussian window (sigma 1.5).

    `same` zero-pads the local statistics as the authors' code does; `valid` keeps only the pixels
    whose window lies inside the image (what scikit-image averages).
    """
    channels = x.shape[1]
    taps = gaussian_window().to(x)
    window = (taps[:, None] * taps[None, :]).expand(channels, 1, -1, -1)
    pad = SSIM_WINDOW // 2 if padding == "same" else 0
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=pad, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, padding: str = "same") -> torch.Tensor:
    """Mean SSIM over all pixels, channels and images."""
    return ssim_map(x, y, data_range, padding).mean()


def focal_loss(probabilities: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
               smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on softmax probabilities (B, 2, H, W) against a binary mask (B, 1, H, W).

    As in the authors' code: the one-hot target is clamped to [smooth, 1 - smooth] and smooth is
    added to p_t before the log; mean over pixels, no class weighting.
    """
    target = torch.cat((1 - mask, mask), dim=1).clamp(smooth, 1 - smooth)
    p_t = (target * probabilities).sum(dim=1) + smooth
    return (-((1 - p_t) ** gamma) * torch.log(p_t)).mean()


def draem_loss(reconstruction: torch.Tensor, target: torch.Tensor, logits: torch.Tensor,
               mask: torch.Tensor, ssim_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """L2 + ssim_weight * (1 - SSIM) on the reconstruction, focal on the segmentation.

    Computed in the target's precision (fp32 under bf16 autocast)."""
    reconstruction, logits = reconstruction.to(target.dtype), logits.to(target.dtype)
    terms = {
        "l2": F.mse_loss(reconstruction, target),
        "ssim": 1 - ssim(reconstruction, target),
        "focal": focal_loss(torch.softmax(logits, dim=1), mask),
    }
    terms["total"] = terms["l2"] + ssim_weight * terms["ssim"] + terms["focal"]
    return terms
