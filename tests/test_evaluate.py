import json

import numpy as np
import pytest
import torch
from conftest import make_category, write_png
from PIL import Image

from draem.cli import main
from draem.engine.config import TrainConfig
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.run import ModelInfo, load_model, save_model
from draem.engine.train import train
from draem.methods.draem import DraemModel, DraemOptions
from draem.metrics import auroc

METRICS = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro", "images"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_category(root / "widget", defects={"spot": 3, "scratch": 2})
    run = root / "run"
    train(TrainConfig(data=str(data), out=str(run), max_steps=2, batch_size=2, image_size=32,
                      options={"recon_width": 4, "seg_width": 4}))
    return data, run


def test_test_command_prints_a_table_and_writes_metrics(trained, capsys):
    data, run = trained
    assert main(["test", "--run", str(run), "--data", str(data)]) == 0
    table = capsys.readouterr().out
    assert "image_auroc" in table and "spot" in table and "scratch" in table
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["overall"]) == METRICS
    assert set(metrics["defect_types"]) == {"spot", "scratch"}
    assert metrics["overall"]["images"] == 8 and metrics["defect_types"]["scratch"]["images"] == 5
    assert all(0 <= v <= 1 for k, v in metrics["overall"].items() if k != "images")


def test_per_type_metrics_pair_that_type_with_all_good_images(trained, tmp_path):
    data, run = trained
    metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), out=str(tmp_path)))
    rows = (tmp_path / "scores.csv").read_text().splitlines()[1:]
    types = [r.split(",")[1] for r in rows]
    scores = torch.tensor([float(r.split(",")[2]) for r in rows])
    chosen = torch.tensor([t in ("good", "spot") for t in types])
    labels = torch.tensor([t == "spot" for t in types])
    expected = auroc(scores[chosen], labels[chosen])
    assert metrics["defect_types"]["spot"]["image_auroc"] == pytest.approx(expected)


def test_scores_match_a_direct_forward_pass(trained, tmp_path):
    data, run = trained
    evaluate(EvaluationConfig(run=str(run), data=str(data), out=str(tmp_path), precision="fp32"))
    first = (tmp_path / "scores.csv").read_text().splitlines()[1].split(",")
    loaded = load_model(run)
    image = np.asarray(Image.open(first[0]).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        _, score = loaded.model.predict(x, window=loaded.info.score_window)
    assert float(first[2]) == pytest.approx(score.item(), abs=1e-5)


def test_mask_of_the_wrong_size_is_named(trained, tmp_path, capsys):
    _data, run = trained
    copy = make_category(tmp_path / "copy")
    write_png(copy / "ground_truth" / "spot" / "000_mask.png", np.zeros((10, 10), np.uint8))
    assert main(["test", "--run", str(run), "--data", str(copy)]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "000_mask.png: mask is 10x10 but its image 000.png is 40x40" in err


def test_unreadable_test_image_is_named(trained, tmp_path, capsys):
    _data, run = trained
    copy = make_category(tmp_path / "copy")
    (copy / "test" / "good" / "001.png").write_bytes(b"\x89PNG broken")
    assert main(["test", "--run", str(run), "--data", str(copy)]) != 0
    assert "001.png: unreadable image" in capsys.readouterr().err.strip().splitlines()[-1]


def test_checkpoint_of_another_architecture_is_refused(tmp_path, capsys):
    save_model(tmp_path / "model.pt", DraemModel(DraemOptions(8, 4)),
               ModelInfo("draem", {"recon_width": 4, "seg_width": 4}, image_size=32))
    data = make_category(tmp_path / "data")
    assert main(["test", "--run", str(tmp_path), "--data", str(data)]) != 0
    err = capsys.readouterr().err
    assert "model.pt: weight" in err and "expected" in err and "Traceback" not in err
    torch.save({"something": 1}, tmp_path / "model.pt")
    assert main(["test", "--run", str(tmp_path), "--data", str(data)]) != 0
    assert "not a draem model file" in capsys.readouterr().err
    (tmp_path / "model.pt").write_bytes(b"truncated")
    assert main(["test", "--run", str(tmp_path), "--data", str(data)]) != 0
    assert "model.pt: cannot read checkpoint" in capsys.readouterr().err


def test_pad_fit_ignores_padding_in_every_metric(tmp_path):
    data = make_category(tmp_path / "data")
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), max_steps=1, batch_size=2, image_size=32,
                      options={"recon_width": 4, "seg_width": 4}, fit="pad"))
    metrics = evaluate(EvaluationConfig(run=str(run), data=str(data)))
    assert 0 <= metrics["overall"]["pixel_auroc"] <= 1


def test_plain_folders_without_masks_give_image_metrics_only(tmp_path, capsys):
    data = make_category(tmp_path / "widget", train=6, good=3, defects={"spot": 3})
    run = tmp_path / "run"
    assert main(["train", "--normal", str(data / "train" / "good"), "--out", str(run), "--max-steps", "1",
                 "--image-size", "32", "--recon-width", "4", "--seg-width", "4", "--batch-size", "2"]) == 0
    assert main(["test", "--run", str(run), "--normal", str(data / "test" / "good"),
                 "--abnormal", str(data / "test" / "spot")]) == 0
    assert "n/a" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["pixel_auroc"] is None and 0 <= metrics["overall"]["image_auroc"] <= 1
    assert main(["test", "--run", str(run), "--normal", str(data / "train" / "good"),
                 "--abnormal", str(data / "test" / "spot")]) != 0
    assert "is the training folder" in capsys.readouterr().err
    assert main(["test", "--run", str(run), "--normal", str(data / "test" / "good"), "--abnormal",
                 str(data / "test" / "spot"), "--masks", str(data / "ground_truth" / "spot")]) == 0
    assert json.loads((run / "metrics.json").read_text())["overall"]["pixel_auroc"] is not None
