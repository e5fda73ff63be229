import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_category, write_png
from PIL import Image

from draem import Detector, Draem
from draem.cli import main
from draem.engine.calibrate import midway_threshold, normalise
from draem.engine.config import TrainConfig
from draem.engine.predict import expand_inputs
from draem.engine.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = make_category(root / "widget", train=10)
    out = root / "run"
    train(TrainConfig(data=str(data), out=str(out), max_steps=2, batch_size=2, image_size=32,
                      options={"recon_width": 4, "seg_width": 4}, validation_fraction=0.2))
    return out


def test_trained_runs_carry_calibrated_thresholds(run):
    thresholds = torch.load(run / "model.pt")["info"]["thresholds"]
    assert thresholds["method"] == "simulated defects"
    assert thresholds["normal_images"] == 2 and thresholds["defective_images"] >= 8
    assert thresholds["image_low"] <= thresholds["image"] <= thresholds["image_high"]
    assert 0 <= thresholds["pixel"] <= 1


def test_midway_threshold_sits_between_the_classes():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.9])
    labels = torch.tensor([False, False, False, True, True])
    assert midway_threshold(scores, labels) == pytest.approx(0.5)
    assert normalise(torch.tensor([0.5]), 0.5, 0.1, 0.9).item() == pytest.approx(0.5)
    assert normalise(torch.tensor([0.9, 0.1]), 0.5, 0.1, 0.9).tolist() == pytest.approx([1.0, 0.0])


def test_predict_writes_maps_overlays_masks_and_tables(run, tmp_path, capsys):
    images = tmp_path / "in"
    rng = np.random.default_rng(0)
    write_png(images / "a.png", rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    write_png(images / "sub" / "b.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["predict", "--run", str(run), str(images), "--out", str(out), "--batch-size", "2"])
    assert code == 3
    err = capsys.readouterr().err
    assert "broken.png: unreadable image" in err and "1 of 3 inputs could not be read" in err
    with (out / "predictions.csv").open() as stream:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(stream)}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["score"]
    a = rows["a.png"]
    assert a["decision"] in ("good", "defective") and 0 <= float(a["normalized_score"]) <= 1
    anomaly_map = np.asarray(Image.open(a["map"]))
    assert anomaly_map.shape == (30, 50) and anomaly_map.dtype == np.uint16
    assert Image.open(a["overlay"]).size == (50, 30)
    mask = np.asarray(Image.open(a["mask"]))
    assert set(np.unique(mask)) <= {0, 255}
    assert (out / "sub" / "b_overlay.png").exists()
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 3 and {r["decision"] for r in records} <= {"good", "defective", None}


def test_predict_npy_maps_match_the_python_api(run, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    path = write_png(tmp_path / "x.png", image)
    assert main(["predict", "--run", str(run), str(path), "--out", str(tmp_path / "o"),
                 "--map-format", "npy", "--precision", "fp32"]) == 0
    saved = np.load(tmp_path / "o" / "x_map.npy")
    prediction = Detector.load(run, precision="fp32").predict(path)
    assert saved.shape == prediction.anomaly_map.shape == (24, 40)
    np.testing.assert_allclose(saved, prediction.anomaly_map, atol=1e-6)
    again = Detector.load(run, precision="fp32").predict(Image.open(path))
    assert again.score == pytest.approx(prediction.score)
    assert prediction.decision in ("good", "defective")
    assert prediction.is_defective == (prediction.score >= Detector.load(run).thresholds["image"])


def test_the_earlier_api_name_still_loads_with_a_deprecation_warning(run):
    with pytest.warns(DeprecationWarning, match="use draem.Detector"):
        old = Draem.load(run)
    assert isinstance(old, Detector) and old.thresholds == Detector.load(run).thresholds


def test_inputs_expand_files_folders_and_globs(tmp_path):
    for name in ("a/x.png", "b/x.png", "c.jpg"):
        write_png(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    found = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), str(tmp_path / "c.jpg")])
    assert [i.name for i in found] == ["x", "x_1", "c"]


def test_labelled_calibration_uses_real_defects(run, tmp_path, capsys):
    data = make_category(tmp_path / "val", good=4, defects={"spot": 4}, seed=3)
    run = shutil.copytree(run, tmp_path / "run")
    assert main(["calibrate", "--run", str(run), "--data", str(data)]) == 0
    assert "4 good, 4 defective" in capsys.readouterr().out
    thresholds = torch.load(run / "model.pt")["info"]["thresholds"]
    assert thresholds["method"] == "labelled defects"


def test_reviewed_folders_without_masks_set_the_image_threshold_and_keep_the_pixel_one(run, tmp_path, capsys):
    data = make_category(tmp_path / "val", good=4, defects={"spot": 4}, seed=3)
    good, defective = tmp_path / "good", tmp_path / "defective"
    shutil.copytree(data / "test" / "good", good)
    shutil.copytree(data / "test" / "spot", defective)
    run = shutil.copytree(run, tmp_path / "run")
    before = torch.load(run / "model.pt")["info"]["thresholds"]
    assert main(["test", "--run", str(run), "--normal", str(good), "--abnormal", str(defective)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["overall"]
    assert metrics["image_auroc"] is not None and metrics["pixel_auroc"] is None
    assert main(["calibrate", "--run", str(run), "--normal", str(good), "--abnormal", str(defective)]) == 0
    assert "4 good, 4 defective" in capsys.readouterr().out
    after = torch.load(run / "model.pt")["info"]["thresholds"]
    assert after["method"].startswith("labelled images without masks")
    assert [after[k] for k in ("pixel", "pixel_low", "pixel_high")] == [before[k] for k in
                                                                        ("pixel", "pixel_low", "pixel_high")]
    assert after["normal_images"] == 4 and after["defective_images"] == 4


def test_calibrating_an_uncalibrated_run_on_images_without_masks_is_refused(run, tmp_path, capsys):
    data = make_category(tmp_path / "val", good=2, defects={"spot": 2}, seed=3)
    run = shutil.copytree(run, tmp_path / "run")
    payload = torch.load(run / "model.pt")
    payload["info"]["thresholds"] = {}
    torch.save(payload, run / "model.pt")
    code = main(["calibrate", "--run", str(run), "--normal", str(data / "test" / "good"),
                 "--abnormal", str(data / "test" / "spot")])
    assert code == 2 and "have no masks" in capsys.readouterr().err
    assert torch.load(run / "model.pt")["info"]["thresholds"] == {}
