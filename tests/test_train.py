import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from draem.cli import main
from draem.engine.config import TrainConfig
from draem.engine.run import RunFiles
from draem.engine.runlog import LossLog
from draem.engine.sampling import epoch_batches
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.draem import model as draem_model

TINY = ["--image-size", "32", "--recon-width", "4", "--seg-width", "4", "--batch-size", "2"]


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    options = dict(data=str(data), out=str(out), max_steps=4, batch_size=2, image_size=32,
                   options={"recon_width": 4, "seg_width": 4}, checkpoint_every=1)
    return TrainConfig(**(options | overrides))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu")["state_dict"]


def test_train_writes_a_complete_run_directory(category, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(category), "--out", str(out), "--max-steps", "3", *TINY])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("model.pt")
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["max_steps"] == 3 and config["train"]["seed"] == 0
    assert config["train"]["method"] == "draem" and config["train"]["options"]["beta"] == "random"
    assert torch.__version__.startswith(config["versions"]["torch"])
    with (out / "losses.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["total"]) > 0 for r in rows)
    assert set(weights(out / "model.pt")) == set(torch.load(out / "checkpoint.pt")["model"])


def test_the_paper_recipe_follows_the_methods_multistep_schedule(category, tmp_path):
    train(tiny_config(category, tmp_path / "run", max_steps=10, recipe="paper"))
    with (tmp_path / "run" / "losses.csv").open() as stream:
        rates = [float(r["lr"]) for r in csv.DictReader(stream)]
    assert rates == pytest.approx([1e-4] * 8 + [2e-5] + [4e-6])


def test_epochs_cover_every_image_once(category):
    batches = epoch_batches(8, 3, 3, seed=0, epoch=4)
    images = sorted(i for b in batches for i, _ in b)
    assert images == list(range(8)) and [len(b) for b in batches] == [3, 3, 2]
    assert batches != epoch_batches(8, 3, 3, seed=0, epoch=5)
    assert [len(b) for b in epoch_batches(7, 3, 2, seed=0, epoch=0)] == [2, 2, 2]
    assert all(0 <= t < 3 for b in batches for _, t in b)


def test_training_is_deterministic_under_a_seed(category, tmp_path):
    train(tiny_config(category, tmp_path / "first"))
    train(tiny_config(category, tmp_path / "second"))
    train(tiny_config(category, tmp_path / "other", seed=1))
    first = weights(tmp_path / "first" / "model.pt")
    second, other = weights(tmp_path / "second" / "model.pt"), weights(tmp_path / "other" / "model.pt")
    assert all(torch.equal(v, second[k]) for k, v in first.items())
    assert not all(torch.equal(v, other[k]) for k, v in first.items())


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "draem", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for_rows(path: Path, rows: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.exists() and len(path.read_text().strip().splitlines()) > rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"training never reached {rows} steps")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(category, tmp_path):
    out = tmp_path / "run"
    process = run_cli("train", "--data", str(category), "--out", str(out), "--max-steps", "500",
                      "--checkpoint-every", "1000", *TINY)
    wait_for_rows(out / "losses.csv", 2, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    stderr = process.stderr.read()
    assert "checkpoint.pt: training interrupted at step" in stderr
    assert "Traceback" not in stderr
    step = torch.load(out / "checkpoint.pt")["step"]
    assert 2 <= step < 500


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(category, tmp_path, monkeypatch, capsys):
    real = draem_model.draem_loss
    calls = []

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(draem_model, "draem_loss", poisoned)
    out = tmp_path / "run"
    code = main(["train", "--data", str(category), "--out", str(out), "--max-steps", "5",
                 "--checkpoint-every", "1", *TINY])
    assert code != 0
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("draem: error:") and "non-finite loss" in message and "checkpoint.pt" in message
    assert torch.load(out / "checkpoint.pt")["step"] == 2


def test_existing_run_needs_resume(category, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(category), "--out", str(out), "--max-steps", "1", *TINY]) == 0
    assert main(["train", "--data", str(category), "--out", str(out), "--max-steps", "1", *TINY]) != 0
    assert "pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "40"], "multiple of 32"),
    (["--batch-size", "0"], "--batch-size 0"),
])
def test_bad_options_give_one_line(category, tmp_path, capsys, flags, message):
    code = main(["train", "--data", str(category), "--out", str(tmp_path / "r"), *TINY, *flags])
    err = capsys.readouterr().err
    assert code != 0 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_extra_normal_images_join_the_training_images(category, tmp_path):
    extra = tmp_path / "reviewed-good"
    extra.mkdir()
    for path in sorted((category / "test" / "good").glob("*.png")):
        (extra / path.name).write_bytes(path.read_bytes())
    train(tiny_config(category, tmp_path / "run", max_steps=1, extra_normal=str(extra), validation_fraction=0.0))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train_images"] == 6 + 3 and saved["train"]["extra_normal"] == str(extra.absolute())
    (extra / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DraemError, match="broken.png"):
        train(tiny_config(category, tmp_path / "again", extra_normal=str(extra)))
    assert not (tmp_path / "again").exists()


def test_a_resumed_loss_log_keeps_earlier_rows_under_their_columns_when_terms_were_added(tmp_path):
    files = RunFiles(tmp_path)
    files.losses.write_text("step,epoch,stage,lr,real,fake,images_per_s\n1,0,train,0.1,0.5,0.6,10.0\n"
                            "2,0,train,0.1,0.4,0.7,11.0\n3,0,train,0.1,0.3,0.8,12.0\n")
    with LossLog(files, ("real", "latent", "fake"), step=2, total_steps=5) as log:
        log.record(3, 0, "train", 0.1, {"real": 0.25, "latent": 0.05, "fake": 0.9}, 8)
    with files.losses.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[1] == {"step": "2", "epoch": "0", "stage": "train", "lr": "0.1", "real": "0.4", "latent": "",
                             "fake": "0.7", "images_per_s": "11.0"}
    assert rows[2]["latent"] == "0.050000" and rows[2]["fake"] == "0.900000"
