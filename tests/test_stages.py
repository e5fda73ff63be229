"""Multi-stage methods on the engine: frozen parts, one optimiser per stage, resume inside a stage."""

import csv

import pytest
import torch
from conftest import make_category

from draem.engine.config import TrainConfig
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.base import Stage, TrainBatch, Update


def toy_config(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), method="toy-stages", max_steps=6, batch_size=2, image_size=32,
                    checkpoint_every=1, validation_fraction=0.0)
    return TrainConfig(**(settings | overrides))


def test_each_stage_trains_only_its_part(toy, tmp_path):
    data = make_category(tmp_path / "widget")
    train(toy_config(data, tmp_path / "run", recipe="paper"))
    with (tmp_path / "run" / "losses.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["stage"] for r in rows] == ["first"] * 3 + ["second"] * 3
    assert all(r["first"] and not r["second"] for r in rows[:3]) and all(r["second"] for r in rows[3:])
    assert [float(r["lr"]) for r in rows[3:]] == pytest.approx([1e-2, 1e-2, 1e-3])
    state = torch.load(tmp_path / "run" / "checkpoint.pt")
    assert set(state["optimizers"]) == {"first/adam", "second/adam"} and set(state["schedulers"]) == {"second/0"}

    torch.manual_seed(0)
    initial = toy().state_dict()
    final = state["model"]
    assert not torch.equal(final["first.0.weight"], initial["first.0.weight"]), "stage 1 trains `first`"
    assert not torch.equal(final["second.weight"], initial["second.weight"]), "stage 2 trains `second`"


def test_the_frozen_part_stays_as_its_stage_left_it(toy, tmp_path):
    data = make_category(tmp_path / "widget")
    calls = []
    original = toy.training_step

    def recording(self, batch, stage, update):
        if stage.name == "second" and not calls:
            calls.append({k: v.clone() for k, v in self.first.state_dict().items()})
        return original(self, batch, stage, update)

    toy.training_step = recording
    try:
        train(toy_config(data, tmp_path / "run"))
    finally:
        toy.training_step = original
    final = torch.load(tmp_path / "run" / "checkpoint.pt")["model"]
    for key, value in calls[0].items():
        assert torch.equal(final[f"first.{key}"], value), f"first.{key} changed in the second stage"


def test_a_run_stopped_inside_the_second_stage_resumes_to_the_same_model(toy, tmp_path):
    data = make_category(tmp_path / "widget")
    train(toy_config(data, tmp_path / "straight"))
    original = toy.training_step

    def failing(self, batch: TrainBatch, stage: Stage, update: Update) -> dict:
        if batch.step == 4:
            raise DraemError("simulated crash")
        return original(self, batch, stage, update)

    toy.training_step = failing
    try:
        with pytest.raises(DraemError):
            train(toy_config(data, tmp_path / "stopped"))
    finally:
        toy.training_step = original
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt")
    assert state["step"] == 4 and state["stage"] == "second"
    train(toy_config(data, tmp_path / "stopped", resume=True))
    expected = torch.load(tmp_path / "straight" / "model.pt")["state_dict"]
    got = torch.load(tmp_path / "stopped" / "model.pt")["state_dict"]
    assert all(torch.equal(value, got[key]) for key, value in expected.items())


def test_a_multi_stage_run_keeps_its_number_of_steps(toy, tmp_path):
    data = make_category(tmp_path / "widget")
    train(toy_config(data, tmp_path / "run", max_steps=4))
    with pytest.raises(DraemError, match="cannot change its number of steps"):
        train(toy_config(data, tmp_path / "run", max_steps=8, resume=True))
