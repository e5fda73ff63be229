import numpy as np
import pytest
import torch
from conftest import write_png
from PIL import Image

from draem.data.datasets import TrainImages
from draem.data.images import fit_to_square, map_to_original, read_image, read_mask, valid_region
from draem.errors import DraemError


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_reads_every_common_format_as_rgb_in_unit_range(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(array).save(path)
    image = read_image(path)
    assert image.shape == (3, 12, 10) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    if suffix != ".jpg":
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy() * 255, array, atol=1e-4)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = write_png(tmp_path / "g.png", np.full((5, 7), 51, np.uint8))
    image = read_image(gray)
    assert image.shape == (3, 5, 7)
    assert torch.allclose(image, torch.full_like(image, 0.2))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    image = read_image(write_png(tmp_path / "a.png", rgba))
    assert image.shape == (3, 4, 4)
    assert torch.allclose(image[0], torch.ones(4, 4)) and image[1:].abs().max() == 0


def test_16_bit_images_use_their_full_range(tmp_path):
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    image = read_image(path)
    np.testing.assert_allclose(image[0, 0].numpy(), [0, 32768 / 65535, 1], atol=1e-6)
    tif = tmp_path / "deep.tif"
    Image.fromarray(array).save(tif)
    np.testing.assert_allclose(read_image(tif)[0, 0].numpy(), [0, 32768 / 65535, 1], atol=1e-6)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DraemError, match="notes.png: unreadable image"):
        read_image(bad)
    good = write_png(tmp_path / "full.jpg", np.zeros((64, 64, 3), np.uint8) + 100)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DraemError, match="cut.jpg: unreadable image"):
        read_image(truncated)
    with pytest.raises(DraemError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_mask_is_single_channel(tmp_path):
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = 255
    assert read_mask(write_png(tmp_path / "m.png", mask)).shape == (1, 6, 6)


def test_pad_keeps_aspect_and_maps_back():
    image = torch.rand(3, 20, 60)
    fitted, where = fit_to_square(image, 30, "pad")
    assert fitted.shape == (3, 30, 30)
    assert (where.inner_height, where.inner_width, where.top, where.left) == (10, 30, 10, 0)
    region = valid_region(where, 30)
    assert region.sum() == 300 and region[10:20].all()
    back = map_to_original(fitted[0], where)
    assert back.shape == (20, 60)
    squashed, where = fit_to_square(image, 30, "resize")
    assert squashed.shape == (3, 30, 30) and valid_region(where, 30).all()


def test_the_authors_resize_does_not_antialias_and_keeps_only_full_mask_pixels():
    from draem.data.images import binary_mask, fit_to_square

    mask = torch.zeros(1, 64, 64)
    mask[:, 10:30, 10:31] = 1.0
    ours = binary_mask(fit_to_square(mask, 32, "resize")[0][0])
    authors = binary_mask(fit_to_square(mask, 32, "resize", "authors")[0][0], "authors")
    assert authors.sum() < ours.sum() and bool((ours | ~authors).all()), "the authors' mask is a subset of ours"
    stripes = torch.zeros(1, 96, 96)
    stripes[:, :, ::2] = 1.0
    smooth = fit_to_square(stripes, 32, "resize")[0]
    sharp = fit_to_square(stripes, 32, "resize", "authors")[0]
    assert smooth.std() < 0.1 < 0.4 < sharp.std(), "antialiasing averages the stripes away; the authors' way aliases"


def test_training_images_are_read_once_while_the_cache_has_room(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for i, path in enumerate(paths):
        write_png(path, np.full((40, 30, 3), 60 * i + 10, dtype=np.uint8))
    one_image = 3 * 16 * 16 * 4
    cached = TrainImages(paths, 16, "resize", textures=paths[:1], cache_bytes=2 * one_image)
    first = cached[(0, 0)]  # fills the room: image 0, and the same file as a texture
    expected = [TrainImages(paths, 16, "resize", textures=paths[:1])[(i, 0)] for i in range(2)]
    cached[(1, 0)]
    for path in paths:
        path.unlink()
    again = cached[(0, 0)]
    assert again["image"] is first["image"] and again["source"] is first["source"]
    for key in ("image", "source"):
        torch.testing.assert_close(again[key], expected[0][key], rtol=0, atol=0)
    with pytest.raises(DraemError, match="1.png"):
        cached[(1, 0)]
