import json

import torch

from draem.cli import main
from draem.engine.demo import DemoConfig, run_demo


def test_demo_generates_trains_tests_and_reports(tmp_path, capsys):
    config = DemoConfig(out=str(tmp_path / "demo"), kinds=("wood",), image_size=32,
                        options={"recon_width": 4, "seg_width": 4}, steps=2, train_per_kind=8,
                        test_good_per_kind=3, test_defects_per_type=2)
    reports = run_demo(config)
    assert [p.name for p in reports] == ["report.html"]
    assert reports[0].stat().st_size > 1000
    out = capsys.readouterr().out
    assert "wood" in out and "image_auroc" in out
    assert (tmp_path / "demo" / "data" / "wood" / "test").is_dir()
    assert json.loads((reports[0].parent / "metrics.json").read_text())["score_window"] == config.score_window
    again = run_demo(config)
    assert again == reports


def test_demo_trains_again_when_its_data_changed(tmp_path):
    config = DemoConfig(out=str(tmp_path / "demo"), kinds=("wood",), image_size=32,
                        options={"recon_width": 4, "seg_width": 4}, steps=2, train_per_kind=8,
                        test_good_per_kind=3, test_defects_per_type=2)
    checkpoint = run_demo(config)[0].parent / "checkpoint.pt"
    first = torch.load(checkpoint)["model"]
    run_demo(config)
    assert all(torch.equal(first[k], v) for k, v in torch.load(checkpoint)["model"].items())
    config.train_per_kind = 12
    run_demo(config)
    assert not all(torch.equal(first[k], v) for k, v in torch.load(checkpoint)["model"].items())


def test_data_demo_command_writes_the_dataset(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path / "d"), "--image-size", "32"]) == 0
    assert (tmp_path / "d" / "fabric" / "train" / "good").is_dir()


def test_the_demo_ends_with_the_command_that_serves_its_run(tmp_path, capsys, monkeypatch):
    run = tmp_path / "demo" / "runs" / "fabric"
    monkeypatch.setattr("draem.engine.demo.run_demo", lambda config: [run / "report.html"])
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"draem serve --run {run}")
