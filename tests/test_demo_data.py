"""The built-in demo dataset: layout, determinism, exact masks, defect sizes and products."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from draem.data.demo import (
    DEFECT_AREA_RANGE,
    DEFECT_TYPES,
    DEMO_KINDS,
    generate_demo_dataset,
    render_sample,
)
from draem.data.images import read_image, read_mask
from draem.errors import DraemError

SMALL = {"image_size": 64, "train_per_kind": 3, "test_good_per_kind": 2, "test_defects_per_type": 2}
ALL_DEFECTS = [(kind, defect) for kind in DEMO_KINDS for defect in DEFECT_TYPES[kind]]


def _file_digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=3, **SMALL)


def test_there_are_several_kinds_each_with_three_or_four_defect_types() -> None:
    assert len(DEMO_KINDS) >= 3
    assert set(DEFECT_TYPES) == set(DEMO_KINDS)
    for defects in DEFECT_TYPES.values():
        assert 3 <= len(defects) <= 4
        assert len(set(defects)) == len(defects) and "good" not in defects


def test_layout_and_counts_follow_mvtec(small_dataset: Path) -> None:
    assert sorted(p.name for p in small_dataset.iterdir() if p.is_dir()) == sorted(DEMO_KINDS)
    assert not small_dataset.with_name(small_dataset.name + ".partial").exists()
    for kind in DEMO_KINDS:
        root = small_dataset / kind
        assert _names(root) == ["ground_truth", "test", "train"]
        assert _names(root / "train") == ["good"]
        assert _names(root / "train" / "good") == ["000.png", "001.png", "002.png"]
        assert _names(root / "test") == sorted(["good", *DEFECT_TYPES[kind]])
        assert _names(root / "test" / "good") == ["000.png", "001.png"]
        assert _names(root / "ground_truth") == sorted(DEFECT_TYPES[kind])
        for defect in DEFECT_TYPES[kind]:
            assert _names(root / "test" / defect) == ["000.png", "001.png"]
            assert _names(root / "ground_truth" / defect) == ["000_mask.png", "001_mask.png"]


def test_readme_names_the_dataset_and_seed(small_dataset: Path) -> None:
    text = (small_dataset / "README.txt").read_text(encoding="utf-8")
    assert "demo" in text.lower()
    assert "seed: 3" in text.splitlines()


def test_images_are_rgb_and_masks_are_binary_and_non_empty(small_dataset: Path) -> None:
    for kind in DEMO_KINDS:
        for image_path in sorted((small_dataset / kind).rglob("test/*/*.png")):
            with Image.open(image_path) as image:
                assert image.mode == "RGB" and image.size == (64, 64)
            assert tuple(read_image(image_path).shape) == (3, 64, 64)
        for mask_path in sorted((small_dataset / kind / "ground_truth").rglob("*.png")):
            with Image.open(mask_path) as mask:
                assert mask.mode == "L" and mask.size == (64, 64)
                values = set(np.unique(np.asarray(mask)).tolist())
            assert values == {0, 255}
            area = float(read_mask(mask_path).mean())
            assert DEFECT_AREA_RANGE[0] <= area <= DEFECT_AREA_RANGE[1]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(
        small_dataset: Path, tmp_path: Path) -> None:
    again = generate_demo_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _file_digests(again) == _file_digests(small_dataset)
    other = generate_demo_dataset(tmp_path / "other", seed=4, **SMALL)
    other_digests, digests = _file_digests(other), _file_digests(small_dataset)
    images = [name for name in digests if name.endswith(".png") and "ground_truth" not in name]
    assert all(other_digests[name] != digests[name] for name in images)


def test_a_subset_of_kinds_renders_the_same_images(small_dataset: Path, tmp_path: Path) -> None:
    wood_only = generate_demo_dataset(tmp_path / "wood", seed=3, kinds=["wood"], **SMALL)
    assert _names(wood_only) == ["README.txt", "wood"]
    assert _file_digests(wood_only / "wood") == _file_digests(small_dataset / "wood")


@pytest.mark.parametrize(("kind", "defect"), ALL_DEFECTS)
def test_render_sample_is_deterministic(kind: str, defect: str) -> None:
    first = render_sample(kind, defect, np.random.default_rng(11), 64)
    second = render_sample(kind, defect, np.random.default_rng(11), 64)
    other = render_sample(kind, defect, np.random.default_rng(12), 64)
    for name in ("image", "clean", "mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.mask, other.mask)


@pytest.mark.parametrize(("kind", "defect"), ALL_DEFECTS)
def test_mask_is_exactly_the_changed_pixels(kind: str, defect: str) -> None:
    for seed in range(3):
        sample = render_sample(kind, defect, np.random.default_rng(seed), 96)
        good = render_sample(kind, None, np.random.default_rng(seed), 96)
        assert sample.image.shape == (96, 96, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (96, 96) and sample.mask.dtype == bool
        np.testing.assert_array_equal(sample.clean, good.image)
        changed = np.any(sample.image != good.image, axis=-1)
        np.testing.assert_array_equal(sample.mask, changed)
        np.testing.assert_array_equal(sample.image[~sample.mask], good.image[~sample.mask])
        difference = np.abs(sample.image.astype(np.int16) - good.image.astype(np.int16))
        assert difference[sample.mask].mean() >= 8
        assert 1 <= ndimage.label(sample.mask, np.ones((3, 3)))[1] <= 8


@pytest.mark.parametrize("image_size", [64, 128])
def test_defect_area_stays_within_bounds(image_size: int) -> None:
    low, high = DEFECT_AREA_RANGE
    assert 0.003 <= low < high <= 0.08
    for kind, defect in ALL_DEFECTS:
        for seed in range(4):
            mask = render_sample(kind, defect, np.random.default_rng(100 + seed), image_size).mask
            assert low <= mask.mean() <= high, (kind, defect, seed, mask.mean())


@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_good_samples_have_no_defect_and_vary(kind: str) -> None:
    samples = [render_sample(kind, None, np.random.default_rng(seed), 64) for seed in range(4)]
    images = [sample.image.astype(np.float64) / 255 for sample in samples]
    for sample, image in zip(samples, images, strict=True):
        assert not sample.mask.any()
        np.testing.assert_array_equal(sample.image, sample.clean)
        assert image.mean(axis=-1).std() > 0.02
        assert np.abs(image - image.mean(axis=-1, keepdims=True)).mean() > 0.003
    for i, first in enumerate(images):
        for second in images[i + 1:]:
            assert np.abs(first - second).mean() > 0.02
    assert np.std([image.mean() for image in images]) > 0.01


@pytest.mark.parametrize("kind", ["fabric", "metal", "wood"])
def test_one_product_keeps_its_colours_while_products_differ(kind: str) -> None:
    """Terrazzo is left out: its random chips dominate the mean colour of an image."""
    def chromaticity(product: int, seed: int) -> np.ndarray:
        mean = render_sample(kind, None, np.random.default_rng(seed), 64, product).image.reshape(-1, 3).mean(0)
        return mean / mean.sum()

    same = [chromaticity(0, seed) for seed in range(4)]
    within = max(np.abs(a - b).max() for a in same for b in same)
    across = max(np.abs(chromaticity(product, 0) - same[0]).max() for product in range(1, 4))
    assert across > 2 * within


def test_second_call_with_same_parameters_is_a_no_op(tmp_path: Path) -> None:
    settings = {**SMALL, "kinds": ["metal"], "seed": 5}
    out = generate_demo_dataset(tmp_path / "demo", **settings)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert generate_demo_dataset(tmp_path / "demo", **settings) == out
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_same_seed_with_other_parameters_replaces_the_dataset(tmp_path: Path) -> None:
    out = generate_demo_dataset(tmp_path / "demo", seed=5, **{**SMALL, "kinds": ["metal"]})
    generate_demo_dataset(out, seed=5, **{**SMALL, "kinds": ["metal"], "train_per_kind": 4})
    assert len(list((out / "metal" / "train" / "good").iterdir())) == 4
    assert "train_per_kind=4" in (out / "README.txt").read_text(encoding="utf-8")
    assert not out.with_name("demo.partial").exists()


def test_refuses_a_folder_that_is_not_a_demo_dataset_with_this_seed(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(DraemError, match="mine"):
        generate_demo_dataset(foreign, **SMALL)
    assert _names(foreign) == ["notes.txt"]
    demo = generate_demo_dataset(tmp_path / "demo", seed=1, **{**SMALL, "kinds": ["wood"]})
    with pytest.raises(DraemError, match="seed"):
        generate_demo_dataset(demo, seed=2, **{**SMALL, "kinds": ["wood"]})
    assert "seed: 1" in (demo / "README.txt").read_text(encoding="utf-8")
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(DraemError):
        generate_demo_dataset(a_file, **SMALL)


def test_writes_into_an_empty_folder_and_clears_an_interrupted_run(tmp_path: Path) -> None:
    settings = {**SMALL, "kinds": ["fabric"]}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_demo_dataset(empty, **settings) / "fabric" / "train" / "good").is_dir()
    leftover = tmp_path / "next.partial"
    shutil.copytree(empty, leftover)
    (leftover / "fabric" / "train" / "good" / "stray.png").write_bytes(b"half")
    out = generate_demo_dataset(tmp_path / "next", **settings)
    assert not leftover.exists()
    assert _file_digests(out) == _file_digests(empty)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DraemError, match="carpet"):
        generate_demo_dataset(tmp_path / "a", kinds=["carpet"])
    with pytest.raises(DraemError, match="size"):
        generate_demo_dataset(tmp_path / "b", image_size=8)
    with pytest.raises(DraemError, match="train_per_kind"):
        generate_demo_dataset(tmp_path / "c", train_per_kind=0)
    with pytest.raises(DraemError, match="seed"):
        generate_demo_dataset(tmp_path / "d", seed=-1)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError):
        render_sample("carpet", None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_sample("wood", "missing_thread", np.random.default_rng(0))
