import numpy as np
import pytest
from conftest import make_category, write_png

from draem.data.mvtec import category_dir, find_categories, list_test_samples, list_train_images
from draem.errors import DraemError


def test_finds_categories_in_a_root_or_a_single_category(tmp_path):
    make_category(tmp_path / "a")
    make_category(tmp_path / "b")
    assert [p.name for p in find_categories(tmp_path)] == ["a", "b"]
    assert find_categories(tmp_path / "a") == [tmp_path / "a"]
    assert category_dir(tmp_path, "b") == tmp_path / "b"
    with pytest.raises(DraemError, match="several categories"):
        category_dir(tmp_path, None)


def test_lists_train_and_test_images_with_masks(category):
    assert len(list_train_images(category)) == 6
    samples = list_test_samples(category)
    assert [s.defect_type for s in samples] == ["good"] * 3 + ["spot"] * 3
    assert all(s.mask_path is None for s in samples[:3])
    assert all(s.mask_path.name == f"{s.path.stem}_mask.png" for s in samples[3:])


def test_masks_may_have_any_image_extension(category):
    mask = category / "ground_truth" / "spot" / "000_mask.png"
    mask.rename(mask.with_suffix(".bmp"))
    assert list_test_samples(category)[3].mask_path.suffix == ".bmp"


@pytest.mark.parametrize("setup, message", [
    (lambda c: None, "dataset folder not found"),
    (lambda c: c.mkdir(), "no category folder"),
    (lambda c: (c / "train" / "good").mkdir(parents=True), "no images"),
    (lambda c: (c / "train").mkdir(parents=True), "train/good not found"),
])
def test_missing_or_empty_folders_are_named(tmp_path, setup, message):
    folder = tmp_path / "cat"
    setup(folder)
    with pytest.raises(DraemError, match=message) as error:
        list_train_images(category_dir(folder, None))
    assert str(folder) in str(error.value)


def test_defective_image_without_mask_is_an_error(category):
    write_png(category / "test" / "spot" / "orphan.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DraemError, match="orphan.png: defective test image has no mask"):
        list_test_samples(category)
