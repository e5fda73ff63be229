import numpy as np
import pytest
import torch
from conftest import MTD
from skimage.metrics import structural_similarity

from draem.data.images import fit_to_square, list_images, read_image
from draem.losses import focal_loss, ssim, ssim_map
from draem.methods.draem import draem_loss


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images and channels of scikit-image's Gaussian SSIM (the paper's settings)."""
    values = [structural_similarity(x[b, c].double().numpy(), y[b, c].double().numpy(),
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0)
              for b in range(x.shape[0]) for c in range(x.shape[1])]
    return float(np.mean(values))


def test_ssim_matches_scikit_image_on_random_images():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 40, generator=generator)
    y = (x + 0.3 * torch.rand(2, 3, 48, 40, generator=generator)).clamp(0, 1)
    assert ssim(x, y, padding="valid").item() == pytest.approx(skimage_ssim(x, y), abs=1e-4)


@pytest.mark.skipif(not MTD.is_dir(), reason=f"{MTD} not present")
def test_ssim_matches_scikit_image_on_real_images():
    paths = list_images(MTD / "train" / "good")[:2]
    x = torch.stack([fit_to_square(read_image(p), 96, "resize")[0] for p in paths])
    y = x.flip(0)
    assert ssim(x, y, padding="valid").item() == pytest.approx(skimage_ssim(x, y), abs=1e-4)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(x, noisy, padding="valid").item() == pytest.approx(skimage_ssim(x, noisy), abs=1e-4)


def test_zero_padded_ssim_agrees_with_valid_ssim_away_from_the_border():
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    same, valid = ssim_map(x, y, padding="same"), ssim_map(x, y, padding="valid")
    torch.testing.assert_close(same[..., 5:-5, 5:-5], valid)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_focal_loss_follows_the_formula_pixel_by_pixel():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 2, 5, 6, generator=generator), dim=1)
    mask = (torch.rand(2, 1, 5, 6, generator=generator) > 0.5).float()
    smooth, total = 1e-5, 0.0
    for b in range(2):
        for i in range(5):
            for j in range(6):
                label = int(mask[b, 0, i, j])
                target = [smooth, smooth]
                target[label] = 1 - smooth
                p_t = target[0] * probs[b, 0, i, j].item() + target[1] * probs[b, 1, i, j].item() + smooth
                total += -((1 - p_t) ** 2) * np.log(p_t)
    assert focal_loss(probs, mask).item() == pytest.approx(total / 60, rel=1e-5)


def test_focal_loss_is_small_for_confident_correct_predictions():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    confident = torch.cat((1 - mask, mask), dim=1)
    assert focal_loss(confident, mask).item() < 1e-8
    assert focal_loss(1 - confident, mask).item() > 5


def test_draem_loss_sums_the_three_terms():
    rec, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    logits, mask = torch.randn(2, 2, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    terms = draem_loss(rec, target, logits, mask)
    assert terms["l2"].item() == pytest.approx(((rec - target) ** 2).mean().item())
    assert terms["ssim"].item() == pytest.approx(1 - ssim(rec, target).item())
    assert terms["total"].item() == pytest.approx(
        terms["l2"].item() + terms["ssim"].item() + terms["focal"].item())
