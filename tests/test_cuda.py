"""The CUDA path of every method: bf16 training, testing and prediction on the GPU, and fp32 maps equal to the CPU's.

These run only where CUDA is present (pytest lists them as skipped elsewhere); the README says where they last ran.
"""

import csv
import json

import pytest
import torch
from conftest import make_category
from test_methods import SIZE, common_flags

from draem import methods
from draem.cli import main
from draem.engine.devices import autocast
from draem.engine.run import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", methods.available())
def test_a_method_trains_tests_and_predicts_on_cuda(name, tmp_path):
    data = make_category(tmp_path / "widget", train=8)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "4", "--device", "cuda",
                 "--precision", "bf16", *common_flags(name)]) == 0
    with (run / "losses.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    losses = [float(row[term]) for row in rows for term in load_model(run).model.loss_names() if row[term]]
    assert len(rows) == 4 and losses and all(torch.isfinite(torch.tensor(losses)))
    assert main(["test", "--run", str(run), "--data", str(data), "--device", "cuda", "--precision", "fp32"]) == 0
    assert 0 <= json.loads((run / "metrics.json").read_text())["overall"]["pixel_auroc"] <= 1
    out = tmp_path / "predictions"
    assert main(["predict", "--run", str(run), str(data / "test" / "spot"), "--out", str(out), "--device", "cuda",
                 "--precision", "bf16"]) == 0
    with (out / "predictions.csv").open() as stream:
        assert not any(row["error"] for row in csv.DictReader(stream))

    model = load_model(run).model
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu_maps, cpu_scores = model.predict(images)
        with autocast(torch.device("cuda"), "fp32"):  # the engine's fp32: TF32 off
            cuda_maps, cuda_scores = model.cuda().predict(images.cuda())
    tolerance = 10 * model.float32_tolerance
    assert (cuda_maps.cpu() - cpu_maps).abs().max() <= tolerance
    assert (cuda_scores.cpu() - cpu_scores).abs().max() <= tolerance
