"""The budget recipe (schedule, score window choice), --time-budget and the weight average."""

import csv
import itertools
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import make_category
from torch import nn

from draem import methods
from draem.cli import main
from draem.engine.calibrate import (
    LabelledBatch,
    best_window,
    calibration_samples,
    choose_score_window,
)
from draem.engine.config import TrainConfig, paper_steps
from draem.engine.recipe import (
    FINAL_RATE_SHARE,
    WeightAverage,
    averaged_names,
    fit_schedules,
    parse_duration,
    peak_rate_scale,
    steps_within,
    warmup_stable_decay,
    window_candidates,
)
from draem.engine.sampling import split_validation, training_images
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.base import Stage, split_steps

TINY = ["--image-size", "32", "--recon-width", "4", "--seg-width", "4", "--batch-size", "2"]


def tiny_config(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), max_steps=20, batch_size=2, image_size=32,
                    options={"recon_width": 4, "seg_width": 4}, checkpoint_every=5)
    return TrainConfig(**(settings | overrides))


def test_warmup_then_the_peak_then_a_cosine_decay_to_one_percent_over_the_last_fifth():
    shares = [warmup_stable_decay(step, 100) for step in range(100)]
    assert shares[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert shares[4:81] == pytest.approx([1.0] * 77) and shares[90] == pytest.approx(0.505)
    assert all(a >= b for a, b in itertools.pairwise(shares[4:]))
    assert FINAL_RATE_SHARE < shares[-1] < FINAL_RATE_SHARE + 0.01


def test_the_peak_rate_grows_with_how_much_shorter_the_run_is_up_to_the_methods_limit():
    assert peak_rate_scale(1000, 1000, 4.0) == 1.0
    assert peak_rate_scale(1000, 4000, 4.0) == pytest.approx(2.0)
    assert peak_rate_scale(100, 100_000, 4.0) == 4.0 and peak_rate_scale(100, 100_000, 1.0) == 1.0
    assert peak_rate_scale(5000, 1000, 4.0) == 1.0


def test_each_stage_gets_its_own_schedule_at_the_raised_rate():
    one, two = nn.Linear(2, 2), nn.Linear(2, 2)
    second = torch.optim.Adam(two.parameters(), lr=1e-2)
    stages = [Stage("a", 0.5, [one], {"adam": torch.optim.Adam(one.parameters(), lr=1e-3)}),
              Stage("b", 0.5, [two], {"adam": second}, [torch.optim.lr_scheduler.StepLR(second, 1, gamma=0.5)])]
    stages[1].schedulers[0].step()  # the method's own scheduler has moved the rate: the peak starts from the set one
    fit_schedules(stages, [20, 40], scale=2.0)
    assert [len(s.schedulers) for s in stages] == [1, 1]
    assert stages[0].lr == pytest.approx(2e-3 * warmup_stable_decay(0, 20))
    for _ in range(2):
        stages[1].schedulers[0].step()
    assert stages[1].lr == pytest.approx(2e-2 * warmup_stable_decay(2, 40))


@pytest.mark.parametrize(("text", "seconds"), [("45m", 2700), ("2h", 7200), ("90s", 90), ("1.5m", 90), ("30", 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5m", "0s", "45 minutes", "1d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(DraemError, match="--time-budget"):
        parse_duration(text)


def test_steps_within_keep_a_reserve_for_calibration():
    assert steps_within(1000.0, 1.0) == 950 and steps_within(0.5, 2.0) == 1 and steps_within(-3.0, 1.0) == 1


def test_the_weight_average_follows_what_optimisers_train_and_normalisation_statistics_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Linear(2, 2))
    model.register_buffer("codebook", torch.zeros(3))
    model.register_parameter("ema", nn.Parameter(torch.zeros(3), requires_grad=False))
    model.ema.requires_grad_(True)  # as the engine's activate() leaves a trained module's EMA parameters
    stages = [Stage("a", 0.5, [model], {"adam": torch.optim.Adam([*model[0].parameters(), *model[1].parameters()])}),
              Stage("b", 0.5, [model[2]], {"adam": torch.optim.Adam(model[2].parameters())}, averaged=False)]
    assert set(averaged_names(model, stages)) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                  "1.running_var"}
    average = WeightAverage(model, stages, horizon=4)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        for value in (model.codebook, model.ema, model[2].weight):
            value.fill_(7.0)
    average.update(model)
    average.copy_to(model)
    assert torch.allclose(model[0].weight, start + 0.25)
    assert all(torch.equal(v, torch.full_like(v, 7.0)) for v in (model.codebook, model.ema, model[2].weight))


def test_the_window_that_separates_simulated_defects_best_is_chosen():
    # Scores: window 3 separates perfectly; 1 and 5 do not; 9 ties with 3 but is farther from the preferred 5.
    by_window = {1: [0.5, 0.6, 0.4, 0.7], 3: [0.1, 0.2, 0.8, 0.9], 5: [0.3, 0.6, 0.5, 0.7], 9: [0.1, 0.2, 0.3, 0.4]}
    info = SimpleNamespace(score_window=21)

    def predictor(images):
        scores = torch.tensor(by_window[info.score_window])
        return None, scores[images[:, 0, 0, 0].long()]

    predictor.loaded = SimpleNamespace(info=info)
    index = torch.arange(4.0)[:, None, None, None].expand(4, 3, 2, 2)
    batches = [LabelledBatch(index[:2], torch.zeros(2, 2, 2, dtype=torch.bool), False),
               LabelledBatch(index[2:], torch.ones(2, 2, 2, dtype=torch.bool), True)]
    separation = choose_score_window(predictor, batches, (1, 3, 5, 9), preferred=5)
    assert info.score_window == 3 and separation[3] == separation[9] == 1.0 and separation[1] == 0.5
    assert window_candidates(128) == (1, 3, 5, 9, 15, 21, 31) and window_candidates(32) == (1, 3, 5)


def test_ties_between_windows_go_to_the_one_nearest_the_preferred():
    assert best_window({1: 0.9, 3: 0.8, 31: 0.9}, preferred=21) == 31
    assert best_window({1: 0.9, 3: 0.8, 31: 0.9}, preferred=5) == 1 and best_window({9: 0.5, 15: 0.7}) == 15


def test_calibration_uses_the_held_out_images_and_simulated_defects_drawn_from_the_run_seed(category, tmp_path):
    config = tiny_config(category, tmp_path)
    held_out = split_validation(sorted((category / "train" / "good").glob("*.png")), 0.1, 0)[1]
    images = training_images(config)[1]
    assert (images.calibration, images.textures) == (held_out, []) and len(held_out) == 1  # a tenth of 6 images
    images = sorted((category / "train" / "good").glob("*.png"))[:2]
    first, again = (calibration_samples(config, images, []) for _ in range(2))
    other = calibration_samples(tiny_config(category, tmp_path, seed=1), images, [])
    assert [b.defective for b in first] == [False] + [True] * 8 and all(b.masks[0].any() for b in first[1:])
    assert all(torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
               for a, b in zip(first, again, strict=True))
    assert torch.equal(first[0].images, other[0].images) and not torch.equal(first[1].images, other[1].images)


def test_a_budget_run_warms_up_decays_and_chooses_its_window(category, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(category, out))
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["recipe"] == "budget" and config["score_window"] is None
    with (out / "losses.csv").open() as stream:
        rates = [float(r["lr"]) for r in csv.DictReader(stream)]
    # 6 training images of 700 epochs of 3 steps: 2,100 paper steps, 20 here: sqrt(105) > 4, so 4e-4 at the peak.
    assert rates == pytest.approx([4e-4 * warmup_stable_decay(step, 20) for step in range(20)], rel=1e-5)
    saved = torch.load(out / "model.pt")
    assert saved["info"]["score_window"] in window_candidates(32)
    state = torch.load(out / "checkpoint.pt")
    assert "average" not in state and all(torch.equal(saved["state_dict"][k], v) for k, v in state["model"].items())


def test_with_average_weights_the_model_file_keeps_the_average_and_the_checkpoint_the_last_weights(category,
                                                                                                   tmp_path):
    out = tmp_path / "run"
    train(tiny_config(category, out, average_weights=True))
    saved, state = torch.load(out / "model.pt"), torch.load(out / "checkpoint.pt")
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in state["average"].items())
    assert not all(torch.equal(state["model"][k], v) for k, v in state["average"].items())


def test_the_paper_recipe_keeps_the_methods_schedule_and_window(category, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(category, out, recipe="paper"))
    with (out / "losses.csv").open() as stream:
        rates = [float(r["lr"]) for r in csv.DictReader(stream)]
    assert rates == pytest.approx([1e-4] * 16 + [2e-5] * 2 + [4e-6] * 2)
    assert torch.load(out / "model.pt")["info"]["score_window"] == 21
    assert "average" not in torch.load(out / "checkpoint.pt")


def test_an_interrupted_averaging_budget_run_resumes_to_the_same_model(category, tmp_path, monkeypatch):
    train(tiny_config(category, tmp_path / "straight", average_weights=True))
    from draem.methods.draem.model import DraemModel

    original = DraemModel.training_step

    def failing(self, batch, stage, update):
        if batch.step == 12:
            raise DraemError("simulated crash")
        return original(self, batch, stage, update)

    monkeypatch.setattr(DraemModel, "training_step", failing)
    with pytest.raises(DraemError):
        train(tiny_config(category, tmp_path / "stopped", average_weights=True))
    monkeypatch.setattr(DraemModel, "training_step", original)
    train(tiny_config(category, tmp_path / "stopped", resume=True))
    expected = torch.load(tmp_path / "straight" / "model.pt")
    got = torch.load(tmp_path / "stopped" / "model.pt")
    assert all(torch.equal(v, got["state_dict"][k]) for k, v in expected["state_dict"].items())
    assert got["info"]["score_window"] == expected["info"]["score_window"]


def test_a_time_budget_sets_the_steps_from_the_measured_step_time(category, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(category), "--out", str(out), "--time-budget", "4s", *TINY]) == 0
    saved = json.loads((out / "config.json").read_text())
    steps = saved["train"]["max_steps"]
    assert saved["train"]["time_budget"] == "4s" and saved["train"]["recipe"] == "budget"
    assert steps >= 1 and saved["total_steps"] == steps
    assert f"training for {steps} steps" in capsys.readouterr().err
    with (out / "losses.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == steps


def test_a_time_budget_and_max_steps_together_are_refused(category, tmp_path, capsys):
    code = main(["train", "--data", str(category), "--out", str(tmp_path / "run"), "--time-budget", "5m",
                 "--max-steps", "10", *TINY])
    assert code != 0 and "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_runs_saved_before_recipes_existed_resume_with_the_papers():
    old = {**vars(TrainConfig(data="d", out="o", max_steps=5)), "score_window": 21}
    del old["recipe"]
    assert TrainConfig.from_dict(old).recipe == "paper"


def test_multi_stage_averaging_runs_give_the_next_stage_the_averaged_weights(toy, tmp_path, monkeypatch):
    seen = []
    original = toy.training_step

    def recording(self, batch, stage, update):
        if stage.name == "second" and not seen:
            seen.append({k: v.clone() for k, v in self.first.state_dict().items()})
        return original(self, batch, stage, update)

    monkeypatch.setattr(toy, "training_step", recording)
    out = tmp_path / "run"
    train(TrainConfig(data=str(make_category(tmp_path / "widget")), out=str(out), method="toy-stages", max_steps=6,
                      batch_size=2, image_size=32, checkpoint_every=1, validation_fraction=0.0, average_weights=True))
    with (out / "losses.csv").open() as stream:
        rates = [float(r["lr"]) for r in csv.DictReader(stream)]
    assert rates[3] == pytest.approx(1e-2 * peak_rate_scale(6, 700 * 3, 4.0) * warmup_stable_decay(0, 3))
    final = torch.load(out / "model.pt")["state_dict"]
    for key, value in seen[0].items():
        assert torch.equal(final[f"first.{key}"], value), f"first.{key}: not the average the first stage ended with"


def test_a_bad_time_budget_gives_one_line_before_any_work(category, tmp_path, capsys):
    code = main(["train", "--data", str(category), "--out", str(tmp_path / "run"), "--time-budget", "soon", *TINY])
    assert code != 0 and "--time-budget soon: expected a positive duration" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_recipe_is_refused_before_any_work(category, tmp_path):
    with pytest.raises(DraemError, match="--recipe fast: expected one of paper, budget"):
        train(tiny_config(category, tmp_path / "run", recipe="fast"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", methods.available())
def test_every_method_under_the_budget_recipe_warms_up_each_stage_to_its_raised_rate(name, category, tmp_path):
    method, steps = methods.get(name), 12
    out = tmp_path / "run"
    train(TrainConfig(data=str(category), out=str(out), method=name, options=method.tiny_options, max_steps=steps,
                      batch_size=2, image_size=32, validation_fraction=0.0))
    saved = json.loads((out / "config.json").read_text())
    paper = paper_steps(TrainConfig(data=None, out=""), method, saved["steps_per_epoch"])
    scale = peak_rate_scale(steps, paper, method.budget_rate_scale)
    stages = method(method.Options.from_dict(saved["train"]["options"])).stages(steps)
    expected = []
    for stage, count in zip(stages, split_steps(steps, [s.fraction for s in stages]), strict=True):
        base = stage.lr
        expected += [scale * base * warmup_stable_decay(step, count) for step in range(count)]
    with (out / "losses.csv").open() as stream:
        rates = [float(r["lr"]) for r in csv.DictReader(stream)]
    assert saved["train"]["recipe"] == "budget" and rates == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_trains_for_the_steps_its_time_budget_allows(name, category, tmp_path, caplog):
    method = methods.get(name)
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="draem"):
        train(TrainConfig(data=str(category), out=str(out), method=name, options=method.tiny_options,
                          time_budget="3s", batch_size=2, image_size=32, validation_fraction=0.0))
    saved = json.loads((out / "config.json").read_text())
    steps = saved["train"]["max_steps"]
    assert steps >= 1 and saved["total_steps"] == steps and f"training for {steps} steps" in caplog.text
    with (out / "losses.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == steps
