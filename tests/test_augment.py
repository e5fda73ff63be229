import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from draem.synthesis.augment import (
    AUGMENTER_NAMES,
    add_to_hue_and_saturation,
    affine_rotate,
    apply_augmentation_plan,
    augment_anomaly_sources,
    autocontrast,
    draw_augmentation_plan,
    enhance_sharpness,
    equalize,
    gamma_contrast,
    invert,
    multiply_and_add_to_brightness,
    posterize,
    solarize,
)

PER_SAMPLE_FUNCTIONS = {
    "gamma_contrast": gamma_contrast,
    "multiply_and_add_to_brightness": multiply_and_add_to_brightness,
    "enhance_sharpness": enhance_sharpness,
    "add_to_hue_and_saturation": add_to_hue_and_saturation,
    "solarize": solarize,
    "posterize": posterize,
    "invert": invert,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "affine_rotate": affine_rotate,
}


def uint8_batch(count: int, height: int = 18, width: int = 22, seed: int = 0) -> np.ndarray:
    """Varied uint8 RGB images (N, H, W, 3): noise, a narrow bell, a flat channel, a ramp."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, height, width, 3)).astype(np.uint8)
    if count > 1:
        images[1] = rng.normal(110, 12, (height, width, 3)).clip(0, 255).astype(np.uint8)
    if count > 2:
        images[2, :, :, 1] = 77
    if count > 3:
        ramp = np.linspace(40, 90, height * width).reshape(height, width)
        images[3] = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    return images


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def pil_each(images: np.ndarray, operation) -> np.ndarray:
    """Apply a PIL operation(image, index) to every image of a uint8 batch."""
    return np.stack([np.asarray(operation(Image.fromarray(image), index))
                     for index, image in enumerate(images)])


def test_names_follow_the_authors_list():
    assert tuple(PER_SAMPLE_FUNCTIONS) == AUGMENTER_NAMES
    assert len(AUGMENTER_NAMES) == 10 and AUGMENTER_NAMES[0] == "gamma_contrast"
    assert AUGMENTER_NAMES[-1] == "affine_rotate"


def test_gamma_contrast_matches_a_per_channel_lookup_table():
    images = uint8_batch(3)
    gamma = torch.tensor([[0.5, 1.0, 2.0], [1.7, 0.6, 1.2], [0.9, 1.9, 0.5]])

    def reference(image: Image.Image, index: int) -> Image.Image:
        bands = [band.point([round(255 * (level / 255) ** float(g)) for level in range(256)])
                 for band, g in zip(image.split(), gamma[index], strict=True)]
        return Image.merge("RGB", bands)

    out = gamma_contrast(to_tensor(images), gamma)
    expected = pil_each(images, reference) / 255
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), expected, atol=0.51 / 255)


def test_brightness_changes_luma_in_ycrcb_and_keeps_chroma():
    images = uint8_batch(3)
    mul = torch.tensor([0.8, 1.2, 1.0])
    add = torch.tensor([30.0, -30.0, 12.5])
    forward = np.array([[0.299, 0.587, 0.114],
                        [0.713 * (1 - 0.299), -0.713 * 0.587, -0.713 * 0.114],
                        [-0.564 * 0.299, -0.564 * 0.587, 0.564 * (1 - 0.114)]])
    expected = []
    for index, image in enumerate(images.astype(np.float64) / 255):
        ycrcb = image @ forward.T
        ycrcb[..., 0] = np.clip(ycrcb[..., 0] * float(mul[index]) + float(add[index]) / 255, 0, 1)
        expected.append(np.clip(np.linalg.solve(forward, ycrcb.reshape(-1, 3).T).T, 0, 1))
    out = multiply_and_add_to_brightness(to_tensor(images), mul, add)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).reshape(3, -1, 3).numpy(),
                               np.stack(expected), atol=1e-5)


def test_sharpness_matches_pil_image_enhance():
    images = uint8_batch(5)
    factors = torch.tensor([0.0, 0.5, 1.0, 1.7, 2.0])
    out = enhance_sharpness(to_tensor(images), factors) * 255
    expected = pil_each(images, lambda image, i: ImageEnhance.Sharpness(image).enhance(
        float(factors[i])))
    difference = np.abs(out.permute(0, 2, 3, 1).numpy() - expected)
    assert difference.max() <= 2.0  # PIL rounds the filter and truncates the blend on uint8
    assert difference.mean() < 0.6


def test_sharpness_at_zero_is_the_smooth_kernel_inside_and_identity_on_the_border():
    image = torch.zeros(1, 3, 5, 5)
    image[0, :, 2, 2] = 1.0
    out = enhance_sharpness(image, torch.tensor([0.0]))[0, 0]
    assert out[2, 2].item() == pytest.approx(5 / 13)
    assert out[1, 1].item() == pytest.approx(1 / 13)
    image[0, :, 0, 0] = 1.0
    assert enhance_sharpness(image, torch.tensor([0.0]))[0, 0, 0, 0].item() == 1.0


def test_hue_and_saturation_shift_matches_colorsys():
    images = uint8_batch(4, 6, 7)
    images[0, 0, :6] = [[128, 128, 128], [255, 0, 0], [0, 0, 0], [200, 200, 50], [50, 200, 200],
                        [90, 20, 90]]
    hue = torch.tensor([-50, 37, 0, 50])
    saturation = torch.tensor([20, -50, 0, 50])
    out = add_to_hue_and_saturation(to_tensor(images), hue, saturation)
    expected = np.zeros(images.shape)
    for index, image in enumerate(images.astype(np.float64) / 255):
        turns = math.trunc(int(hue[index]) * 180 / 255) / 180
        for y, x in np.ndindex(image.shape[:2]):
            h, s, v = colorsys.rgb_to_hsv(*image[y, x])
            s = min(max(s + int(saturation[index]) / 255, 0.0), 1.0)
            expected[index, y, x] = colorsys.hsv_to_rgb((h + turns) % 1.0, s, v)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


def test_hue_shift_of_43_turns_red_into_yellow():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    out = add_to_hue_and_saturation(red, torch.tensor([43]), torch.tensor([0]))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 1.0, 0.0]))


def test_solarize_matches_pil_where_applied():
    images = uint8_batch(4)
    threshold = torch.tensor([32.0, 128.0, 64.7, 100.0])
    apply = torch.tensor([True, True, True, False])
    out = to_uint8(solarize(to_tensor(images), threshold, apply))
    expected = pil_each(images, lambda image, i: ImageOps.solarize(
        image, int(threshold[i])) if apply[i] else image)
    np.testing.assert_array_equal(out, expected)


def test_posterize_matches_pil_for_every_bit_depth():
    images = uint8_batch(8)
    bits = torch.arange(1, 9)
    out = to_uint8(posterize(to_tensor(images), bits))
    np.testing.assert_array_equal(out, pil_each(images, lambda image, i: ImageOps.posterize(
        image, int(bits[i]))))


def test_invert_matches_pil():
    images = uint8_batch(2)
    out = to_uint8(invert(to_tensor(images)))
    np.testing.assert_array_equal(out, pil_each(images, lambda image, i: ImageOps.invert(image)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autocontrast_matches_pil(seed):
    images = uint8_batch(6, seed=seed)
    cutoff = torch.tensor([0, 1, 2, 5, 13, 20])[torch.randperm(6, generator=torch.Generator()
                                                               .manual_seed(seed))]
    out = to_uint8(autocontrast(to_tensor(images), cutoff))
    expected = pil_each(images, lambda image, i: ImageOps.autocontrast(image, int(cutoff[i])))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("size", [8, 64])
def test_equalize_matches_pil(size):
    images = uint8_batch(5, size, size)
    images[4] = np.where(images[4] > 128, 200, 30).astype(np.uint8)
    images[0, :, :, 2] = (images[0, :, :, 2] // 64) ** 3
    out = to_uint8(equalize(to_tensor(images)))
    np.testing.assert_array_equal(out, pil_each(images, lambda image, i: ImageOps.equalize(image)))


def test_rotation_by_90_degrees_is_a_counter_clockwise_quarter_turn():
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = affine_rotate(image, torch.tensor([90.0]))
    torch.testing.assert_close(out, torch.rot90(image, 1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_rotation_matches_pil_bilinear_inside_and_fills_zero_outside():
    y, x = np.mgrid[0:32, 0:32]
    image = np.stack([4 * x + 40, 3 * y + 50, 2 * (x + y) + 30], axis=2).astype(np.uint8)
    out = to_uint8(affine_rotate(to_tensor(image[None]), torch.tensor([30.0])))[0]
    expected = np.asarray(Image.fromarray(image).rotate(30.0, resample=Image.BILINEAR))
    inside = (x - 15.5) ** 2 + (y - 15.5) ** 2 < 13**2
    assert np.abs(out.astype(int) - expected.astype(int))[inside].max() <= 1
    assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()


def test_plan_draws_distinct_augmenters_in_random_order():
    plan = draw_augmentation_plan(400, torch.Generator().manual_seed(0))
    assert plan.choices.shape == (400, 3)
    assert all(len(set(row.tolist())) == 3 for row in plan.choices)
    for step in range(3):
        counts = torch.bincount(plan.choices[:, step], minlength=10)
        assert counts.min() > 15  # every augmenter appears at every position (40 expected)


def test_augmentation_applies_the_planned_augmenters_in_order():
    images = to_tensor(uint8_batch(6, 16, 16))
    plan = draw_augmentation_plan(6, torch.Generator().manual_seed(3))
    out = apply_augmentation_plan(images, plan)
    for sample in range(6):
        expected = images[sample:sample + 1]
        for index in plan.choices[sample].tolist():
            name = AUGMENTER_NAMES[index]
            parameters = [values[sample:sample + 1] for values in plan.parameters[name]]
            expected = PER_SAMPLE_FUNCTIONS[name](expected, *parameters)
        torch.testing.assert_close(out[sample:sample + 1], expected, atol=1e-6, rtol=0)
        assert not torch.equal(out[sample], images[sample])


def test_augmentation_is_deterministic_bounded_and_shape_preserving():
    images = to_tensor(uint8_batch(5, 16, 16))
    first = augment_anomaly_sources(images, torch.Generator().manual_seed(7))
    again = augment_anomaly_sources(images, torch.Generator().manual_seed(7))
    other = augment_anomaly_sources(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert first.min() >= 0 and first.max() <= 1


def test_every_augmenter_together_stays_in_range_and_batch_of_one_works():
    images = to_tensor(uint8_batch(1, 12, 12))
    out = augment_anomaly_sources(images, torch.Generator().manual_seed(0), per_sample=10)
    assert out.shape == (1, 3, 12, 12)
    assert out.min() >= 0 and out.max() <= 1
    single = augment_anomaly_sources(images, torch.Generator().manual_seed(1))
    assert single.shape == images.shape and not torch.equal(single, images)


def test_zero_augmenters_is_identity_and_too_many_is_an_error():
    images = to_tensor(uint8_batch(2, 8, 8))
    assert torch.equal(augment_anomaly_sources(images, torch.Generator(), per_sample=0), images)
    with pytest.raises(ValueError):
        augment_anomaly_sources(images, torch.Generator(), per_sample=11)
