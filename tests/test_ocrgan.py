"""OCR-GAN: frequency decoupling, channel selection, forged samples, the GAN step, scores and options."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import SHARED, make_category

from draem import methods
from draem.cli import main
from draem.engine.config import TrainConfig, prepare
from draem.engine.run import build_model
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.base import TrainBatch
from draem.methods.ocrgan import (
    OcrGanModel,
    OcrGanOptions,
    decouple,
    discriminator_loss,
    generator_loss,
    ocrgan_score,
)
from draem.methods.ocrgan.ablation import ABLATION_ROWS
from draem.methods.ocrgan.forgery import AREA, forge
from draem.methods.ocrgan.frequency import band_inputs, recompose
from draem.methods.ocrgan.model import deepest
from draem.methods.ocrgan.networks import ChannelSelection

TINY = OcrGanModel.tiny_options
SIZE = 32
PAPER = SHARED / "docs" / "paper-review.txt"


def images(count: int, size: int = SIZE, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def plain_update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def tiny_model(seed: int = 0, **options: object) -> OcrGanModel:
    torch.manual_seed(seed)
    return OcrGanModel(OcrGanOptions(**{**TINY, **options}))


def step(model: OcrGanModel, batch: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """One training step of a model in train mode, with its fresh optimisers."""
    model.train()
    return model.training_step(TrainBatch(batch, None, torch.Generator().manual_seed(seed), 0),
                               model.stages(10)[0], plain_update)


@pytest.mark.parametrize("dtype, rounding", [(torch.float32, 2.0**-24), (torch.float64, 2.0**-53)])
def test_decoupling_is_exact_up_to_one_rounding_and_signed(dtype: torch.dtype, rounding: float) -> None:
    batch = images(4, dtype=dtype)
    low, high = decouple(batch)
    assert low.dtype == high.dtype == dtype and low.shape == high.shape == batch.shape
    assert (low + high - batch).abs().max() <= rounding
    assert high.min() < -0.1 and high.max() > 0.1, "the detail band keeps its negative half"
    assert low.min() >= 0 and low.max() <= 1


def test_decoupling_separates_the_finest_detail_from_flat_regions() -> None:
    checkerboard = ((torch.arange(SIZE)[:, None] + torch.arange(SIZE)) % 2).float().expand(1, 3, -1, -1)
    low, high = decouple(checkerboard)
    assert torch.equal(low, torch.full_like(low, 0.5)) and torch.equal(high.abs(), torch.full_like(high, 0.5))
    flat = torch.full((1, 3, SIZE, SIZE), 0.3)
    low, high = decouple(flat)
    assert high.abs().max() < 1e-7


def test_normalised_bands_lie_in_the_networks_range_and_recompose_the_image() -> None:
    batch = images(2)
    low, high = band_inputs(batch, ("low", "high"))
    assert low.min() >= -1 and low.max() <= 1 and high.min() >= -1 and high.max() <= 1
    torch.testing.assert_close(recompose([low, high], ("low", "high")), batch, atol=1e-6, rtol=0)


def test_channel_selection_weights_sum_to_one_across_branches_for_every_channel() -> None:
    torch.manual_seed(0)
    selection = ChannelSelection(8, 2)
    torch.nn.init.normal_(selection.heads[0].weight, std=1.0)  # weights well away from 1/2
    features = [torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4)]
    weights = selection.weights(features)
    assert weights.shape == (2, 3, 8)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(3, 8))
    assert (weights - 0.5).abs().max() > 0.05
    alone = torch.cat([selection.weights([f[i:i + 1] for f in features]) for i in range(3)], dim=1)
    torch.testing.assert_close(weights, alone, atol=1e-7, rtol=0)
    selected = selection(features)
    for branch in range(2):
        torch.testing.assert_close(selected[branch], features[branch] * weights[branch][:, :, None, None])


def test_channel_selection_is_a_trained_part_of_the_saved_model(tmp_path: Path) -> None:
    data = make_category(tmp_path / "widget", train=4, good=1, defects={"spot": 1}, size=SIZE)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), method="ocrgan", options=dict(TINY),
                            max_steps=2, batch_size=2, image_size=SIZE, validation_fraction=0.0))
    saved = torch.load(run, map_location="cpu")["state_dict"]
    fresh = tiny_model(seed=0).state_dict()  # the engine seeds the global RNG with the run's seed, 0
    keys = [key for key in fresh if key.startswith("generator.selection.")]
    assert len(keys) == 6 * 5, "a bottleneck and two heads, weight and bias each, at each of the 5 levels"
    assert set(keys) <= set(saved)
    changed = [key for key in keys if not torch.equal(saved[key], fresh[key])]
    assert changed == keys


def test_a_gan_step_trains_both_players() -> None:
    model = tiny_model()
    before = {name: value.clone() for name, value in model.named_parameters()}
    terms = step(model, images(4))
    assert set(terms) == set(model.loss_names()) and all(torch.isfinite(v) for v in terms.values())
    for player in ("generator", "discriminator"):
        names = [name for name in before if name.startswith(player + ".")]
        unchanged = [name for name in names if torch.equal(before[name], model.get_parameter(name))]
        assert names and not unchanged, f"{player}: {unchanged}"


def test_single_band_models_have_one_branch_and_no_selection() -> None:
    model = tiny_model(bands="high", channel_selection=False)
    assert list(model.generator.branches) == ["high"] and not model.generator.selection
    assert "d_forged" in model.loss_names()
    terms = step(tiny_model(bands="low", channel_selection=False, forged_samples=False), images(2))
    assert "d_forged" not in terms and torch.isfinite(terms["total"])


def test_scores_of_one_image_and_of_eight_agree_in_eval_mode() -> None:
    model = tiny_model()
    step(model, images(4))
    for selection in model.generator.selection:  # weights that depend on the image, as after long training
        torch.nn.init.normal_(selection.squeeze[0].weight, std=1.0)
        torch.nn.init.normal_(selection.heads[0].weight, std=1.0)
    model.eval()
    batch = images(8, seed=3) * torch.linspace(0.1, 1, 8)[:, None, None, None]  # images far apart
    with torch.no_grad():
        maps, scores = model.predict(batch)
        alone = [model.predict(batch[i:i + 1]) for i in range(8)]
    torch.testing.assert_close(scores, torch.cat([s for _, s in alone]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps, torch.cat([m for m, _ in alone]), atol=1e-6, rtol=1e-5)
    assert scores.std() > 0


def test_score_is_the_weighted_reconstruction_and_feature_errors_over_the_valid_pixels() -> None:
    errors = torch.rand(2, 8, 8)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, :, 4:] = False
    real, fake = torch.randn(2, 100), torch.randn(2, 100)
    scores = ocrgan_score(errors, valid, real, fake, 0.9)
    expected = torch.stack([0.9 * errors[0].mean(), 0.9 * errors[1, :, :4].mean()]) + 0.1 * ((real - fake) ** 2).mean(1)
    torch.testing.assert_close(scores, expected)
    padded = errors.clone()
    padded[1, :, 4:] = 100.0
    torch.testing.assert_close(ocrgan_score(padded, valid, real, fake, 0.9), scores)


def test_predict_uses_the_paper_score_and_a_smoothed_error_map() -> None:
    model = tiny_model(map_smoothing=1).eval()
    batch = images(2)
    with torch.no_grad():
        maps, scores = model.predict(batch)
        reconstruction = model.reconstruct(batch)
        real = model.discriminator(batch * 2 - 1)[1]
        fake = model.discriminator(reconstruction * 2 - 1)[1]
    errors = ((2 * (reconstruction - batch)) ** 2).mean(dim=1)
    torch.testing.assert_close(maps, errors)
    torch.testing.assert_close(scores, 0.9 * errors.mean(dim=(1, 2)) + 0.1 * ((real - fake) ** 2).mean(dim=1))
    everywhere = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch, everywhere)[1], scores)


def test_losses_weigh_their_terms() -> None:
    batch, other = images(2), images(2, seed=1)
    features = torch.randn(2, 100)
    logits = torch.tensor([3.0, -2.0])
    terms = generator_loss(logits, features + 1, features, other, batch, (2.0, 50.0, 3.0))
    assert float(terms["reconstruction"]) == pytest.approx(float((2 * (other - batch)).abs().mean()))
    assert float(terms["features"]) == pytest.approx(1.0)
    assert float(terms["adversarial"]) == pytest.approx(float(torch.nn.functional.softplus(-logits).mean()))
    total = 2 * terms["adversarial"] + 50 * terms["reconstruction"] + 3 * terms["features"]
    assert float(terms["generator"]) == pytest.approx(float(total))
    confident = discriminator_loss(torch.full((2,), 30.0), torch.full((2,), -30.0), features, features,
                                   torch.full((2,), -30.0))
    assert set(confident) == {"d_real", "d_reconstructed", "d_latent", "d_forged", "discriminator"}
    assert float(confident["d_latent"]) == 0 and float(confident["discriminator"]) < 1e-5
    apart = discriminator_loss(torch.full((2,), 30.0), torch.full((2,), -30.0), features, features + 1,
                               latent_weight=3.0)
    assert float(apart["d_latent"]) == pytest.approx(1.0) and float(apart["discriminator"]) == pytest.approx(3.0, 1e-4)


def test_the_discriminator_loss_has_the_authors_latent_term_with_gradient_to_the_discriminator() -> None:
    model = tiny_model(feature_weight=2.0).train()
    batch = images(4)
    seen = []
    original = model.reinitialise_collapsed_discriminator
    model.reinitialise_collapsed_discriminator = lambda loss, generator: seen.append(loss) or original(loss, generator)
    terms = step(model, batch)
    assert float(terms["d_latent"]) > 0 and float(terms["d_latent"]) == pytest.approx(float(terms["features"]))
    err_d = terms["d_real"] + terms["d_reconstructed"] + 2.0 * terms["d_latent"] + terms["d_forged"]
    assert float(terms["discriminator"]) == pytest.approx(float(err_d)), "err_d = real + fake + latent + forged"
    assert float(seen[0].detach()) == pytest.approx(float(err_d)), "the re-initialisation watches err_d"
    (real_logits, real_features), (fake_logits, fake_features) = (model.discriminate(x) for x in (batch, batch))
    same = discriminator_loss(real_logits, fake_logits, real_features, fake_features)
    assert float(same["d_latent"].detach()) == 0, "zero when the reconstruction is the image"
    model.discriminator.zero_grad()
    latent = discriminator_loss(real_logits, fake_logits, real_features,
                                model.discriminate(batch.flip(-1))[1])["d_latent"]
    latent.backward()
    gradients = [p.grad for p in model.discriminator.encoder.parameters()]
    assert float(latent) > 0 and all(g is not None and g.abs().sum() > 0 for g in gradients)


def test_forged_samples_paste_a_patch_of_2_to_15_percent_and_cut_a_hole() -> None:
    size, count, cutout = 128, 48, 20
    batch = images(count, size=size)
    forged = forge(batch, torch.Generator().manual_seed(0), cutout)
    again = forge(batch, torch.Generator().manual_seed(0), cutout)
    assert torch.equal(forged.images, again.images), "every draw comes from the generator"
    share = forged.pasted.float().mean(dim=(1, 2, 3))
    slack = 1.11  # sides are rounded to whole pixels: at least 9.9 px here, so each is off by at most 5 %
    assert (share >= AREA[0] / slack).all() and (share <= AREA[1] * slack).all()
    assert share.min() < 0.04 and share.max() > 0.11, "the areas spread over the range"
    holes = forged.cut_out.float().sum(dim=(1, 2, 3))
    assert ((holes >= (cutout // 2) ** 2) & (holes <= cutout**2)).all() and (holes == cutout**2).any()
    assert (forged.images[forged.cut_out.expand(-1, 3, -1, -1)] == 0).all()
    untouched = ~(forged.pasted | forged.cut_out).expand(-1, 3, -1, -1)
    assert torch.equal(forged.images[untouched], batch[untouched])
    pasted_only = (forged.pasted & ~forged.cut_out).expand(-1, 3, -1, -1)
    assert (forged.images[pasted_only] != batch[pasted_only]).float().mean() > 0.9
    assert forged.images.min() >= 0 and forged.images.max() <= 1


def test_the_discriminator_is_reinitialised_when_its_loss_collapses(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model()
    step(model, images(2))
    trained = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    assert not model.reinitialise_collapsed_discriminator(torch.tensor(1e-3), torch.Generator().manual_seed(5))
    assert all(torch.equal(v, model.discriminator.state_dict()[k]) for k, v in trained.items())
    with caplog.at_level(logging.INFO, logger="draem"):
        assert model.reinitialise_collapsed_discriminator(torch.tensor(9e-6), torch.Generator().manual_seed(5))
    assert "re-initialised" in caplog.text
    redrawn = model.discriminator.state_dict()
    assert not torch.equal(redrawn["encoder.0.weight"], trained["encoder.0.weight"])
    assert float(redrawn["encoder.0.weight"].std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(redrawn["encoder.3.running_mean"], torch.zeros_like(redrawn["encoder.3.running_mean"]))
    other = tiny_model(seed=1)
    assert other.reinitialise_collapsed_discriminator(torch.tensor(0.0), torch.Generator().manual_seed(5))
    assert all(torch.equal(v, other.discriminator.state_dict()[k]) for k, v in redrawn.items()), "deterministic"


def test_a_training_step_checks_the_discriminator_loss(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="draem"):
        step(tiny_model(reinit_below=1e9), images(2))
    assert "re-initialised" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="draem"):
        step(tiny_model(), images(2))
    assert "re-initialised" not in caplog.text


def test_the_image_size_must_suit_the_depth() -> None:
    model = tiny_model(depth=6).eval()
    with pytest.raises(DraemError, match="--depth 6 needs a multiple of 64"):
        model.predict(images(1))
    assert OcrGanModel.size_multiple == 2 ** OcrGanModel.presets["compact"]["depth"]


def test_the_default_networks_are_the_authors_at_256_px() -> None:
    torch.manual_seed(0)
    model = OcrGanModel()
    assert model.options.depth == 8 and OcrGanOptions().depth == 0
    generator = sum(p.numel() for name, p in model.generator.named_parameters() if not name.startswith("selection."))
    assert generator == 108_827_910, "the authors' UnetGenerator_CS at 256 px (their CS blocks hold no parameters)"
    authors_classifier, ours = 100 * 9, 100 + 1  # their Conv2d(nz, 1, 3, padding 1, no bias) on a 1x1 map: a linear
    assert sum(p.numel() for p in model.discriminator.parameters()) == 47_984_260 - authors_classifier + ours
    with torch.no_grad():
        assert model.discriminator.encoder(torch.zeros(2, 3, 256, 256)).shape == (2, 100, 1, 1)


@pytest.mark.parametrize("size, depth", [(32, 5), (64, 6), (96, 5), (128, 7), (256, 8), (1024, 10), (2048, 10)])
def test_depth_0_is_the_deepest_the_image_size_allows(size: int, depth: int) -> None:
    assert deepest(size) == depth and OcrGanOptions().at_image_size(size).depth == depth
    assert OcrGanOptions(depth=5).at_image_size(size).depth == 5


def test_runs_resolve_the_depth_and_older_runs_keep_theirs(tmp_path: Path) -> None:
    def depth(**settings: object) -> int:
        config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), method="ocrgan", image_size=64,
                             **settings)
        return prepare(config)[0].options["depth"]

    assert depth() == 6 and depth(preset="compact") == 5 and depth(preset="demo") == 5
    assert depth(preset="compact", options={"depth": 4}) == 4
    older = {**asdict(OcrGanOptions(**TINY)), "depth": 5}  # saved before depth 0 existed: explicit
    assert build_model("ocrgan", older, tmp_path / "model.pt").options.depth == 5


@pytest.mark.parametrize("options, flag", [
    ({"width": 0}, "--width 0"), ({"disc_width": 0}, "--disc-width"), ({"cutout": 0}, "--cutout"),
    ({"depth": 2}, "--depth 2"), ({"depth": -1}, "--depth -1"), ({"depth": 11}, "--depth 11"),
    ({"bands": "mid"}, "--bands mid"),
    ({"lr": 0.0}, "--lr"), ({"beta1": 1.0}, "--beta1"), ({"reconstruction_weight": -1.0}, "--reconstruction-weight"),
    ({"reinit_below": -1.0}, "--reinit-below"), ({"score_weight": 1.5}, "--score-weight"),
    ({"map_smoothing": 4}, "--map-smoothing"), ({"bands": "high"}, "--no-channel-selection"),
    ({"lr": float("nan")}, "--lr nan")])
def test_bad_options_are_named_in_one_line(options: dict, flag: str) -> None:
    with pytest.raises(DraemError, match=flag) as error:
        OcrGanOptions(**options).validate()
    assert "\n" not in str(error.value)


def test_ablation_rows_are_table_vi_and_each_builds_and_trains() -> None:
    assert methods.get("ocrgan").ablation_rows == ABLATION_ROWS
    table = {row.label: row.image_auroc for row in ABLATION_ROWS}
    assert table == {"high frequency": 82.6, "low frequency": 73.3, "two branches": 74.8, "OCR-GAN": 96.9,
                     "OCR-GAN with forged samples": 98.3}
    if PAPER.is_file():
        lines = PAPER.read_text(encoding="utf-8").splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("ABLATION STUDY FOR FREQUENCY BRANCHES"))
        columns = lines[start + 2].split("\t")[1:]
        figures = next(line for line in lines[start:] if line.startswith("all\t")).split("\t")[1:]
        assert {label: float(value) for label, value in zip(columns, figures, strict=True)} == {
            label: table[label] for label in ("high frequency", "low frequency", "two branches", "OCR-GAN")}
    for row in ABLATION_ROWS:
        assert row.method == "ocrgan" and row.pixel_auroc is None and row.pixel_ap is None
        options = OcrGanOptions.from_dict({**TINY, **row.options})
        options.validate()
        torch.manual_seed(0)
        assert torch.isfinite(step(OcrGanModel(options), images(2))["total"])


def test_draem_ablate_runs_ocrgan_rows(tmp_path: Path) -> None:
    data = make_category(tmp_path / "widget", train=4, good=1, defects={"spot": 1}, size=SIZE)
    out = tmp_path / "ablation"
    flags = ["--image-size", str(SIZE), "--batch-size", "2", "--max-steps", "1", "--device", "cpu",
             "--set", "width=4", "--set", "disc_width=4"]
    assert main(["ablate", "--method", "ocrgan", "--data", str(data), "--out", str(out),
                 "--rows", "high", "ocrgan", *flags]) == 0
    text = (out / "ablation.md").read_text()
    assert "high frequency (high)" in text and "OCR-GAN (ocrgan)" in text and "82.6" in text
