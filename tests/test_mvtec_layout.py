import numpy as np
import pytest
from conftest import make_category, write_png

from draem.data.catalog import find_datasets, open_dataset
from draem.data.mvtec import MVTecCategory
from draem.errors import DraemError


def test_finds_categories_in_a_root_or_a_single_category(tmp_path):
    make_category(tmp_path / "a")
    make_category(tmp_path / "b")
    assert [d.name for d in find_datasets(tmp_path)] == ["a", "b"]
    assert [d.root for d in find_datasets(tmp_path / "a")] == [tmp_path / "a"]
    assert open_dataset(tmp_path, "b").root == tmp_path / "b"
    with pytest.raises(DraemError, match="several categories"):
        open_dataset(tmp_path, None)
    with pytest.raises(DraemError, match="category 'c' not found"):
        open_dataset(tmp_path, "c")


def test_lists_train_and_test_images_with_masks(category):
    assert len(MVTecCategory(category).train_images()) == 6
    samples = MVTecCategory(category).test_samples()
    assert [s.defect_type for s in samples] == ["good"] * 3 + ["spot"] * 3
    assert all(s.mask_path is None for s in samples[:3])
    assert all(s.mask_path.name == f"{s.path.stem}_mask.png" for s in samples[3:])


def test_masks_may_have_any_image_extension(category):
    mask = category / "ground_truth" / "spot" / "000_mask.png"
    mask.rename(mask.with_suffix(".bmp"))
    assert MVTecCategory(category).test_samples()[3].mask_path.suffix == ".bmp"


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
        open_dataset(folder).train_images()
    assert str(folder) in str(error.value)


def test_defective_image_without_mask_is_an_error(category):
    write_png(category / "test" / "spot" / "orphan.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DraemError, match="orphan.png: defective test image has no mask"):
        MVTecCategory(category).test_samples()
