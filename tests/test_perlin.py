import math

import numpy as np
import pytest
import torch

from draem.synthesis.perlin import perlin_noise, random_perlin_noise
from draem.synthesis.transforms import rotate


def reference_perlin(angles: np.ndarray, res: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Classic gradient noise written pixel by pixel, as the method describes it."""
    out = np.zeros(shape)
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    for i in range(shape[0]):
        for j in range(shape[1]):
            y, x = i * res[0] / shape[0], j * res[1] / shape[1]
            cy, cx = int(y), int(x)
            fy, fx = y - cy, x - cx
            dots = {}
            for dy in (0, 1):
                for dx in (0, 1):
                    a = angles[cy + dy, cx + dx]
                    dots[dy, dx] = (fy - dy) * math.cos(a) + (fx - dx) * math.sin(a)
            ty, tx = fade(fy), fade(fx)
            left = dots[0, 0] + ty * (dots[1, 0] - dots[0, 0])
            right = dots[0, 1] + ty * (dots[1, 1] - dots[0, 1])
            out[i, j] = math.sqrt(2) * (left + tx * (right - left))
    return out


@pytest.mark.parametrize("res", [(1, 1), (2, 8), (4, 4), (32, 16)])
def test_noise_matches_the_reference_formula(res):
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 2 * math.pi, (33, 33))
    ours = perlin_noise(torch.tensor(angles[None], dtype=torch.float32), torch.tensor([res]), 64, 32)
    np.testing.assert_allclose(ours[0].numpy(), reference_perlin(angles, res, (64, 32)), atol=1e-5)


def test_each_sample_uses_its_own_lattice():
    angles = torch.rand(2, 33, 33) * 2 * math.pi
    both = perlin_noise(angles, torch.tensor([[2, 2], [16, 4]]), 32, 32)
    alone = perlin_noise(angles[1:], torch.tensor([[16, 4]]), 32, 32)
    torch.testing.assert_close(both[1:], alone)


def test_noise_range_and_mask_coverage_match_the_method():
    generator = torch.Generator().manual_seed(0)
    noise = random_perlin_noise(400, 64, 64, 0, 5, generator)
    assert noise.abs().max() <= 1.0
    assert noise.mean().abs() < 0.02
    coverage = (noise > 0.5).float().mean(dim=(1, 2))
    # Reference statistics from the pixel-by-pixel formula with the same random draws.
    generator = torch.Generator().manual_seed(0)
    exponents = torch.randint(0, 6, (400, 2), generator=generator)
    angles = 2 * math.pi * torch.rand(400, 33, 33, generator=generator)
    ref = np.stack([reference_perlin(angles[i].double().numpy(), tuple((2 ** exponents[i]).tolist()),
                                     (64, 64)) for i in range(40)])
    np.testing.assert_allclose(noise[:40].numpy(), ref, atol=1e-5)
    assert 0.02 < coverage.mean().item() < 0.2
    assert (coverage == 0).float().mean().item() < 0.2


def test_rejects_lattices_above_32():
    with pytest.raises(ValueError):
        random_perlin_noise(1, 64, 64, 0, 6, torch.Generator())


def test_rotation_matches_a_hand_rotated_image():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 6] = 1.0
    turned = rotate(image, torch.tensor([90.0]))
    assert turned[0, 0, 6, 4].item() == pytest.approx(1.0, abs=1e-5) or \
        turned[0, 0, 2, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert turned.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(rotate(image, torch.tensor([0.0])), image)


def test_rotation_fills_corners_with_zeros():
    turned = rotate(torch.ones(1, 3, 32, 32), torch.tensor([45.0]))
    assert turned[0, :, 0, 0].abs().max() == 0
    assert turned[0, :, 16, 16].min() == pytest.approx(1.0)
