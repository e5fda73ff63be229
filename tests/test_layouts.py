from pathlib import Path

import numpy as np
import pytest
from conftest import make_category, write_png

from draem.data.catalog import find_datasets, open_dataset
from draem.data.dagm import DagmClass
from draem.data.folders import FolderDataset
from draem.data.kolektor import KolektorSDD2
from draem.errors import DraemError

PLAIN = np.full((8, 8), 120, np.uint8)
SPOT = np.zeros((8, 8), np.uint8)
SPOT[2:4, 2:4] = 255


def write_dagm_split(split: Path, flags: dict[str, int], newline: str = "\n") -> None:
    """Images NNNN.PNG, and Label/Labels.txt in the DAGM format with NNNN_label.PNG masks."""
    lines = ["1"]
    for index, (stem, flag) in enumerate(flags.items(), start=1):
        write_png(split / f"{stem}.PNG", PLAIN)
        label = f"{stem}_label.PNG" if flag else "0"
        if flag:
            write_png(split / "Label" / label, SPOT)
        lines.append(f"{index}\t{flag}\t{stem}.PNG\t0\t{label}")
    (split / "Label").mkdir(exist_ok=True)
    (split / "Label" / "Labels.txt").write_text(newline.join(lines) + newline)


def make_dagm_class(folder: Path, newline: str = "\n") -> Path:
    write_dagm_split(folder / "Train", {"0001": 0, "0002": 1, "0003": 0, "0004": 0}, newline)
    write_dagm_split(folder / "Test", {"0005": 1, "0006": 0, "0007": 0, "0008": 1}, newline)
    return folder


def make_kolektor(root: Path) -> Path:
    """train/ and test/ with NNNNN.png and NNNNN_GT.png; one dim mask pixel is still a defect."""
    dim = np.zeros((8, 8), np.uint8)
    dim[5, 5] = 1
    for split, masks in (("train", {"10000": SPOT * 0, "10001": SPOT, "10002": SPOT * 0}),
                         ("test", {"20000": SPOT * 0, "20001": dim, "20002": SPOT})):
        for stem, mask in masks.items():
            write_png(root / split / f"{stem}.png", np.dstack([PLAIN] * 3))
            write_png(root / split / f"{stem}_GT.png", mask)
    return root


def one_line_error(call, match: str) -> str:
    with pytest.raises(DraemError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_dagm_root_lists_classes_in_numeric_order(tmp_path):
    for name in ("Class10", "Class2", "Class1"):
        make_dagm_class(tmp_path / name)
    (tmp_path / "notes").mkdir()
    assert [d.name for d in find_datasets(tmp_path)] == ["Class1", "Class2", "Class10"]
    assert all(isinstance(d, DagmClass) for d in find_datasets(tmp_path))


def test_dagm_train_uses_defect_free_images_and_test_is_labelled(tmp_path):
    root = make_dagm_class(tmp_path / "Class3")
    dataset = open_dataset(root)
    assert dataset.name == "Class3"
    assert dataset.train_images() == [root / "Train" / f"{s}.PNG" for s in ("0001", "0003", "0004")]
    samples = dataset.test_samples()
    assert [(s.path.name, s.defect_type) for s in samples] == [
        ("0005.PNG", "defect"), ("0006.PNG", "good"), ("0007.PNG", "good"), ("0008.PNG", "defect")]
    labels = root / "Test" / "Label"
    assert [s.mask_path for s in samples] == [labels / "0005_label.PNG", None, None,
                                              labels / "0008_label.PNG"]


def test_dagm_windows_line_endings_and_nested_class_folder(tmp_path):
    make_dagm_class(tmp_path / "Class5" / "Class5", newline="\t\r\n")
    dataset = open_dataset(tmp_path / "Class5")
    assert dataset.root == tmp_path / "Class5" / "Class5"
    assert len(dataset.train_images()) == 3 and len(dataset.test_samples()) == 4


def test_dagm_defect_row_without_label_name_uses_the_stem(tmp_path):
    root = make_dagm_class(tmp_path / "Class1")
    labels = root / "Test" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text().replace("0005_label.PNG", "0"))
    assert DagmClass(root).test_samples()[0].mask_path == root / "Test" / "Label" / "0005_label.PNG"


def break_labels(root: Path, old: str, new: str) -> None:
    labels = root / "Test" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text().replace(old, new))


@pytest.mark.parametrize("damage, match", [
    (lambda r: (r / "Test" / "Label" / "Labels.txt").unlink(),
     r"Test/Label/Labels.txt: DAGM label file not found"),
    (lambda r: (r / "Test" / "0006.PNG").unlink(),
     r"Test/0006.PNG: listed in .*Labels.txt:3 but not found"),
    (lambda r: (r / "Test" / "Label" / "0008_label.PNG").unlink(),
     r"0008_label.PNG: defect mask of 0008.PNG \(.*Labels.txt:5\) not found"),
    (lambda r: break_labels(r, "2\t0\t0006.PNG", "2\tyes\t0006.PNG"),
     r"Labels.txt:3: expected 'index flag image 0 label'"),
    (lambda r: break_labels(r, "\t1\t", "\t0\t"), r"Test: no defective test images"),
])
def test_dagm_layout_errors_name_the_file(tmp_path, damage, match):
    root = make_dagm_class(tmp_path / "Class1")
    damage(root)
    one_line_error(DagmClass(root).test_samples, match)


def test_dagm_training_needs_defect_free_rows(tmp_path):
    root = make_dagm_class(tmp_path / "Class1")
    labels = root / "Train" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text().replace("\t0\t0001", "\t1\t0001")
                      .replace("\t0\t0003", "\t1\t0003").replace("\t0\t0004", "\t1\t0004"))
    for stem in ("0001", "0003", "0004"):
        write_png(root / "Train" / "Label" / f"{stem}_label.PNG", SPOT)
    one_line_error(DagmClass(root).train_images, r"Train/Label/Labels.txt: no defect-free images")


def test_kolektor_splits_by_mask_content(tmp_path):
    root = make_kolektor(tmp_path / "KolektorSDD2")
    [dataset] = find_datasets(root)
    assert isinstance(dataset, KolektorSDD2) and dataset.name == "kolektorsdd2"
    assert dataset.train_images() == [root / "train" / "10000.png", root / "train" / "10002.png"]
    samples = dataset.test_samples()
    assert [(s.path.name, s.defect_type) for s in samples] == [
        ("20000.png", "good"), ("20001.png", "defect"), ("20002.png", "defect")]
    assert [s.mask_path for s in samples] == [None, root / "test" / "20001_GT.png",
                                              root / "test" / "20002_GT.png"]


def test_kolektor_image_without_mask_is_an_error(tmp_path):
    root = make_kolektor(tmp_path / "ksdd2")
    (root / "test" / "20000_GT.png").unlink()
    one_line_error(KolektorSDD2(root).test_samples,
                   r"test/20000.png: ground-truth mask 20000_GT.png not found")


def test_kolektor_without_good_training_images_is_an_error(tmp_path):
    root = make_kolektor(tmp_path / "ksdd2")
    for stem in ("10000", "10002"):
        write_png(root / "train" / f"{stem}_GT.png", SPOT)
    one_line_error(KolektorSDD2(root).train_images, r"train: no defect-free images")


def test_unrecognised_folder_names_every_layout(tmp_path):
    (tmp_path / "photos" / "misc").mkdir(parents=True)
    message = one_line_error(lambda: find_datasets(tmp_path / "photos"), "no category folder")
    assert str(tmp_path / "photos") in message
    for layout in ("MVTec AD", "DAGM 2007", "Labels.txt", "KolektorSDD2", "_GT.png"):
        assert layout in message


def test_mvtec_is_still_found_beside_other_folders(tmp_path):
    make_category(tmp_path / "screw", train=2, good=1, defects={"scratch": 1}, size=16)
    (tmp_path / "Train").mkdir()
    assert [d.name for d in find_datasets(tmp_path)] == ["screw"]


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """normal/, test_normal/, abnormal/ (a.png, b.png, c.jpg), masks/ in three naming styles."""
    for i in range(3):
        write_png(tmp_path / "normal" / f"n{i}.png", PLAIN)
    write_png(tmp_path / "test_normal" / "t0.png", PLAIN)
    for stem in ("a", "b"):
        write_png(tmp_path / "abnormal" / f"{stem}.png", PLAIN)
    write_png(tmp_path / "abnormal" / "c.jpg", np.dstack([PLAIN] * 3))
    for name in ("a.png", "b_mask.png", "c_GT.png", "unused_mask.png"):
        write_png(tmp_path / "masks" / name, SPOT)
    return {name: tmp_path / name for name in ("normal", "test_normal", "abnormal", "masks")}


def test_folders_match_masks_by_stem(folders):
    dataset = FolderDataset(folders["normal"], folders["test_normal"], folders["abnormal"],
                            folders["masks"], name="widgets")
    assert dataset.name == "widgets"
    assert [p.name for p in dataset.train_images()] == ["n0.png", "n1.png", "n2.png"]
    samples = dataset.test_samples()
    assert [(s.path.name, s.defect_type, s.mask_path and s.mask_path.name) for s in samples] == [
        ("t0.png", "good", None), ("a.png", "defect", "a.png"), ("b.png", "defect", "b_mask.png"),
        ("c.jpg", "defect", "c_GT.png")]


def test_training_folders_include_their_subfolders(folders):
    write_png(folders["normal"] / "textures" / "banded" / "n3.png", PLAIN)  # e.g. DTD's class folders
    names = [p.name for p in FolderDataset(folders["normal"]).train_images()]
    assert names == ["n0.png", "n1.png", "n2.png", "n3.png"]


def test_folders_without_masks_give_image_level_samples(folders):
    dataset = FolderDataset(folders["normal"], folders["test_normal"], folders["abnormal"])
    assert dataset.name == "normal"
    samples = dataset.test_samples()
    assert [s.defect_type for s in samples] == ["good", "defect", "defect", "defect"]
    assert all(s.mask_path is None for s in samples)


def test_folders_with_masks_beside_the_images(folders):
    abnormal = folders["abnormal"]
    write_png(abnormal / "a_mask.png", SPOT)
    write_png(abnormal / "b_GT.png", SPOT)
    write_png(abnormal / "c_mask.png", SPOT)
    dataset = FolderDataset(folders["normal"], folders["test_normal"], abnormal, abnormal)
    samples = dataset.test_samples()
    assert [(s.path.name, s.mask_path.name) for s in samples[1:]] == [
        ("a.png", "a_mask.png"), ("b.png", "b_GT.png"), ("c.jpg", "c_mask.png")]


@pytest.mark.parametrize("change, match", [
    (lambda f: (f["masks"] / "b_mask.png").unlink(),
     r"abnormal/b.png: defective test image has no mask in .*masks \(expected b.png, b_mask.png"),
    (lambda f: f.pop("test_normal"), r"normal: no folder of defect-free test images given"),
    (lambda f: f.update(test_normal=f["normal"]), r"normal: the defect-free test folder is the"),
    (lambda f: f.pop("abnormal"), r"no folder of defective test images given"),
    (lambda f: [p.unlink() for p in f["test_normal"].iterdir()], r"test_normal: no images"),
    (lambda f: f.update(masks=f["masks"] / "missing"), r"masks/missing: mask folder not found"),
])
def test_folder_errors_name_the_path(folders, change, match):
    change(folders)
    dataset = FolderDataset(folders["normal"], folders.get("test_normal"), folders.get("abnormal"),
                            folders.get("masks"))
    one_line_error(dataset.test_samples, match)


def test_empty_training_folder_is_an_error(tmp_path):
    (tmp_path / "normal").mkdir()
    one_line_error(FolderDataset(tmp_path / "normal").train_images, r"normal: no images")
