"""Losses and similarity maps shared by the methods: SSIM, focal loss, multi-scale gradient-magnitude similarity."""

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
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    channels = x.shape[1]
    taps = gaussian_window().to(x)
    window = (taps[:, None] * taps[None, :]).expand(5 * channels, 1, -1, -1)
    pad = SSIM_WINDOW // 2 if padding == "same" else 0
    # the five local means in one depthwise convolution
    stacked = torch.cat((x, y, x * x, y * y, x * y), dim=1).contiguous()
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = F.conv2d(stacked, window, padding=pad,
                                                     groups=5 * channels).split(channels, dim=1)
    var_x = mean_xx - mu_x**2
    var_y = mean_yy - mu_y**2
    cov = mean_xy - mu_x * mu_y
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


GMS_CONSTANT = 0.0026
GMS_SCALES = 4


def gradient_magnitude(grey: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude (B, 1, H, W) of grey images, zero padding."""
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=grey.device, dtype=grey.dtype) / 3
    kernels = torch.stack([prewitt, prewitt.T])[:, None]
    gradients = F.conv2d(grey, kernels, padding=1)
    return torch.sqrt((gradients**2).sum(dim=1, keepdim=True) + 1e-12)


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = GMS_SCALES,
              c: float = GMS_CONSTANT) -> torch.Tensor:
    """Multi-scale gradient-magnitude similarity (B, H, W) of two batches (B, C, H, W).

    Images are averaged over channels; at each scale (halved by 2x2 average pooling) the similarity
    (2 g1 g2 + c) / (g1^2 + g2^2 + c) is upsampled bilinearly to full size; the scales are averaged.
    """
    grey_x, grey_y = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    total = torch.zeros_like(grey_x)
    for scale in range(scales):
        if scale:
            grey_x, grey_y = F.avg_pool2d(grey_x, 2), F.avg_pool2d(grey_y, 2)
        g_x, g_y = gradient_magnitude(grey_x), gradient_magnitude(grey_y)
        similarity = (2 * g_x * g_y + c) / (g_x**2 + g_y**2 + c)
        total = total + F.interpolate(similarity, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return (total / scales)[:, 0]


def msgms_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - the mean multi-scale gradient-magnitude similarity."""
    return 1 - msgms_map(x, y).mean()
