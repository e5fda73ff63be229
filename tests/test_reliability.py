"""What a new user runs into: moved and copied runs, bad images, wrong paths and values, the help text."""

import argparse
import json
import shutil

import pytest
import torch
from conftest import make_category

from draem.cli import build_parser, main

TINY = ["--image-size", "32", "--recon-width", "4", "--seg-width", "4", "--batch-size", "2"]


@pytest.fixture
def finished(tmp_path):
    data = make_category(tmp_path / "widget")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "2", *TINY]) == 0
    return data, run


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resuming_a_copied_run_writes_only_into_the_copy(finished, tmp_path, monkeypatch):
    _, run = finished
    before = snapshot(run)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--out", "copy", "--resume", "--max-steps", "4"]) == 0
    assert snapshot(run) == before, "the original run is untouched"
    assert torch.load(copy / "checkpoint.pt")["step"] == 4
    saved = json.loads((copy / "config.json").read_text())["train"]
    assert saved["out"] == str(copy) and saved["data"].startswith("/")


def test_a_moved_dataset_is_given_with_data(finished, tmp_path):
    data, run = finished
    moved = tmp_path / "moved"
    data.rename(moved)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) != 0
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--data", str(moved)]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["data"] == str(moved)


def test_a_finished_run_says_how_to_extend_it(finished, capsys):
    _, run = finished
    assert main(["train", "--out", str(run), "--resume"]) != 0
    err = capsys.readouterr().err
    assert "finished its 2 steps" in err and "--max-steps" in err and err.count("\n") == 1
    assert (run / "model.pt").exists()


def test_every_unreadable_image_is_listed_before_step_one(tmp_path, capsys):
    data = make_category(tmp_path / "widget", train=8)
    (data / "train" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    good = (data / "train" / "good" / "002.png").read_bytes()
    (data / "train" / "good" / "002.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-steps", "2", *TINY]) != 0
    err = capsys.readouterr().err
    assert "2 of 8 images cannot be read" in err and "001.png" in err and "002.png" in err
    assert err.count("\n") == 1 and not (out / "checkpoint.pt").exists()


def test_testing_plain_folders_needs_abnormal(finished, capsys):
    data, run = finished
    assert main(["test", "--run", str(run), "--normal", str(data / "test" / "good")]) != 0
    err = capsys.readouterr().err
    assert "--abnormal" in err and "training did not see" not in err


def test_a_damaged_model_file_is_one_complete_line(finished, capsys):
    data, run = finished
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:300])
    assert main(["test", "--run", str(run), "--data", str(data)]) != 0
    err = capsys.readouterr().err.strip()
    assert "model.pt: cannot read checkpoint, the file is damaged" in err and err.endswith(")")
    assert "If you are seeing" not in err and "\n" not in err


@pytest.mark.parametrize("command", ["train", "test", "predict"])
def test_out_naming_a_file_is_refused(finished, tmp_path, capsys, command):
    data, run = finished
    target = tmp_path / "a-file"
    target.write_text("")
    arguments = {"train": ["train", "--data", str(data), *TINY],
                 "test": ["test", "--run", str(run), "--data", str(data)],
                 "predict": ["predict", "--run", str(run), str(data / "test" / "good")]}[command]
    assert main([*arguments, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "a-file: --out names a file" in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--lr", "-1"], "--lr -1.0: must be a positive number"),
    (["--score-window", "4"], "--score-window 4: must be a positive odd number"),
    (["--rotation-prob", "2"], "--rotation-prob 2.0: must be in [0, 1]"),
    (["--cache-mb", "-1"], "--cache-mb -1: must be 0 or more"),
])
def test_bad_values_are_one_line(tmp_path, capsys, flags, message):
    data = make_category(tmp_path / "widget")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_even_score_window_is_refused_by_test_too(finished, capsys):
    data, run = finished
    assert main(["test", "--run", str(run), "--data", str(data), "--score-window", "6"]) == 2
    assert "--score-window 6: must be a positive odd number" in capsys.readouterr().err


def test_every_option_is_explained_and_shows_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"draem {name} {action.option_strings or action.dest} has no help"
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._HelpAction):
                assert "(default:" in formatter._get_help_string(action), f"draem {name} {action.dest}"
        sub.format_help()


def test_model_files_of_the_first_format_still_load(finished, tmp_path):
    data, run = finished
    saved = torch.load(run / "model.pt")
    info = dict(saved["info"])
    options = info.pop("options")
    del info["method"], info["resize"]
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"format": "draem-model/1", "info": {**info, "recon_width": options["recon_width"],
                                                     "seg_width": options["seg_width"]},
                "state_dict": saved["state_dict"]}, old / "model.pt")
    assert main(["test", "--run", str(old), "--data", str(data), "--precision", "fp32"]) == 0
    assert main(["test", "--run", str(run), "--data", str(data), "--precision", "fp32"]) == 0
    assert json.loads((old / "metrics.json").read_text())["overall"] == json.loads(
        (run / "metrics.json").read_text())["overall"]
