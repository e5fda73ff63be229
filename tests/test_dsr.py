"""DSR as methods: latent anomalies, colour smudges, the general model on a folder, the stages, resume, imports."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_png
from test_distributed import environment, torchrun

from draem.cli import main
from draem.data.images import read_image
from draem.deploy.official import import_official
from draem.engine.config import TrainConfig
from draem.engine.run import load_model
from draem.engine.train import train
from draem.errors import DraemError
from draem.methods.base import Stage, TrainBatch, Update, split_steps
from draem.methods.dsr import DsrGeneralModel, DsrGeneralOptions, DsrModel, DsrOptions
from draem.methods.dsr.anomalies import (
    colour_smudges,
    latent_anomalies,
    latent_anomaly_masks,
    pool_mask,
    replacement_band,
)
from draem.methods.dsr.general import CodeAges, restart_picks
from draem.methods.dsr.networks import VectorQuantizerEMA

TINY = {"codes": 16, "code_width": 8, "hidden_width": 8}
TINY_DSR = {**TINY, "unet_width": 8}


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "losses.csv").open() as stream:
        return list(csv.DictReader(stream))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu")["state_dict"]


def config(folder: Path, out: Path, method: str, options: dict, steps: int, **settings) -> TrainConfig:
    return TrainConfig(data=None, normal=str(folder), out=str(out), method=method, options=options, max_steps=steps,
                       batch_size=4, image_size=32, validation_fraction=0.0, **settings)


# --------------------------------------------------------------------------------------------------------------------
# Latent anomalies


def quantizer_and_features(codes: int = 64, seed: int = 0) -> tuple[VectorQuantizerEMA, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    quantizer = VectorQuantizerEMA(codes, 4).eval()
    features = torch.randn(2, 4, 6, 6)
    return quantizer, features, quantizer.lookup(quantizer.nearest(features))


def ranks_of(result: torch.Tensor, features: torch.Tensor, quantizer: VectorQuantizerEMA) -> torch.Tensor:
    """For each position, the rank (0: nearest) among all codes of the code it holds, by distance to the feature."""
    codebook = quantizer.codebook
    held = torch.cdist(result.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]), codebook).argmin(dim=1)
    order = quantizer.distances(features).reshape(-1, codebook.shape[0]).argsort(dim=1)
    return (order == held[:, None]).float().argmax(dim=1).view(features.shape[0], *features.shape[2:])


def test_replacement_band_is_the_authors():
    assert replacement_band(4096, 0.2) == (204, 820)  # int(0.2 * 4096) + 1 nearest, without the nearest 5 %
    assert replacement_band(4096, 1.0) == (204, 4095)  # at most K - 1 codes
    assert replacement_band(16, 0.2) == (0, 4)  # 5 % of 16 codes rounds down to none


def test_latent_anomalies_come_from_the_band_and_leave_unmasked_positions():
    quantizer, features, quantized = quantizer_and_features()
    mask = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    strength = torch.tensor([0.3, 0.6])
    result = latent_anomalies(features, quantized, quantizer, mask, strength, torch.Generator().manual_seed(2))
    again = latent_anomalies(features, quantized, quantizer, mask, strength, torch.Generator().manual_seed(2))
    assert torch.equal(result, again), "the draws come from the generator alone"
    kept = mask.expand_as(result) == 0
    assert torch.equal(result[kept], quantized[kept])
    ranks = ranks_of(result, features, quantizer)
    for index, s in enumerate(strength.tolist()):
        first, end = replacement_band(64, s)
        drawn = ranks[index][mask[index, 0] > 0]
        assert first == 3 and len(drawn) > 5
        assert ((drawn >= first) & (drawn < end)).all(), "replacement codes lie in the allowed neighbour band"
    assert (ranks[mask[:, 0] > 0] > 0).all(), "a masked feature never keeps its nearest code"


def test_strength_one_reaches_the_far_codes():
    quantizer, features, quantized = quantizer_and_features()
    everywhere = torch.ones(2, 1, 6, 6)
    generator = torch.Generator().manual_seed(3)
    strong = ranks_of(latent_anomalies(features, quantized, quantizer, everywhere, torch.ones(2), generator),
                      features, quantizer)
    weak = ranks_of(latent_anomalies(features, quantized, quantizer, everywhere, torch.full((2,), 0.2), generator),
                    features, quantizer)
    assert strong.max() >= 48 and strong.float().mean() > 20, "strength 1 draws from (almost) the whole codebook"
    assert weak.max() < replacement_band(64, 0.2)[1] <= 13


# --------------------------------------------------------------------------------------------------------------------
# Masks and colour smudges


def test_latent_masks_are_perlin_blobs_on_half_the_images():
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, mask = latent_anomaly_masks(images, torch.Generator().manual_seed(1))
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.shape == (64, 1, 32, 32)
    assert 20 <= int((mask.flatten(1).amax(dim=1) == 0).sum()) <= 44, "about half the images stay clean"


def test_colour_smudges_are_one_solid_colour_at_opacity_up_to_0_8_on_half_the_images():
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    smudged = colour_smudges(images, torch.Generator().manual_seed(1))
    mask, target, augmented = smudged.mask, smudged.target, smudged.augmented
    assert 20 <= int(smudged.anomaly_drawn.sum()) <= 44
    assert ((smudged.beta >= 0) & (smudged.beta <= 0.8)).all() and smudged.beta.max() > 0.6
    outside = mask.expand_as(target) == 0
    assert torch.allclose(augmented[outside], target[outside])
    assert torch.equal(mask[~smudged.anomaly_drawn], torch.zeros_like(mask[~smudged.anomaly_drawn]))
    for index in smudged.has_anomaly.nonzero().flatten().tolist():
        beta, inside = float(smudged.beta[index]), mask[index, 0] > 0
        colour = (augmented[index][:, inside] - beta * target[index][:, inside]) / (1 - beta)
        assert torch.allclose(colour, colour[:, :1].expand_as(colour), atol=1e-4), "one solid colour per image"


# --------------------------------------------------------------------------------------------------------------------
# Training through the engine


def make_folder(folder: Path, count: int = 8, size: int = 32) -> Path:
    """Images of a few random colour rectangles on a random background."""
    rng = np.random.default_rng(0)
    for index in range(count):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        for _ in range(4):
            y, x = rng.integers(0, size - 8, 2)
            image[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
        write_png(folder / f"{index:02d}.png", image)
    return folder


@pytest.fixture(scope="module")
def general_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("general")
    folder = make_folder(root / "images")
    run = root / "run"
    train(config(folder, run, "dsr-general", {**TINY, "restart_after": 2, "lr": 2e-3}, 40))
    return folder, run


def test_the_general_model_learns_on_a_folder_and_uses_several_codes(general_run):
    folder, run = general_run
    losses = [float(row["general_l2"]) for row in rows(run)]
    assert len(losses) == 40 and all(row["stage"] == "general" for row in rows(run))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), "the reconstruction loss falls"
    model = load_model(run).model
    images = torch.stack([read_image(path) for path in sorted(folder.glob("*.png"))])
    with torch.no_grad():
        encoded = model.vq.encode(images)
    assert encoded.lo.indices.unique().numel() > 1 and encoded.hi.indices.unique().numel() > 1


def test_dsr_on_a_general_model_trains_only_stages_2_and_3_and_keeps_it(general_run, tmp_path):
    folder, general = general_run
    copy = tmp_path / "general.pt"
    copy.write_bytes((general / "model.pt").read_bytes())
    run = tmp_path / "dsr"
    train(config(folder, run, "dsr", {**TINY_DSR, "general_model": str(copy)}, 6))
    assert [row["stage"] for row in rows(run)] == ["object"] * 5 + ["upsampling"]
    assert list(rows(run)[0])[4:-1] == ["feature_hi", "feature_lo", "object_l2", "focal", "upsampling_focal", "total"]
    ours, theirs = weights(run / "model.pt"), weights(general / "model.pt")
    vq = {key.removeprefix("vq."): value for key, value in theirs.items() if key.startswith("vq.")}
    assert vq and all(torch.equal(ours[f"networks.vq.{key}"], value) for key, value in vq.items())
    copy.unlink()
    loaded = load_model(run)  # a finished run holds every weight: the general model's file is not read again
    maps, scores = loaded.model.predict(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32) and scores.shape == (2,)


def test_a_wrong_general_model_is_a_one_line_error(general_run, tmp_path):
    _, general = general_run

    def stages(**options) -> None:
        DsrModel(DsrOptions(**{**TINY_DSR, **options})).stages(12)

    missing = tmp_path / "nope.pt"
    with pytest.raises(DraemError, match=f"{missing}: file not found"):
        stages(general_model=str(missing))
    with pytest.raises(DraemError, match="has 16 codes of width 8 and hidden width 8; pass --codes 16 --code-width 8"):
        stages(general_model=str(general / "model.pt"), codes=32)
    authors = tmp_path / "vq_model_pretrained.pckl"
    torch.save(load_model(general).model.vq.state_dict(), authors)
    with pytest.raises(DraemError, match="reads BGR images; pass --general-channels BGR"):
        stages(general_model=str(authors))
    stages(general_model=str(authors), general_channels="BGR")
    other = tmp_path / "other.pckl"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(DraemError, match="not a DSR general appearance model"):
        stages(general_model=str(other), general_channels="BGR")


def test_a_run_stopped_inside_each_stage_resumes_to_the_same_model(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "images")
    options = {**TINY_DSR, "restart_after": 2, "general_fraction": 0.25}
    train(config(folder, tmp_path / "straight", "dsr", options, 24))
    stages = [row["stage"] for row in rows(tmp_path / "straight")]
    assert stages == ["general"] * 6 + ["object"] * 15 + ["upsampling"] * 3
    original = DsrModel.training_step
    crashes = {3, 10, 22}  # inside the general, object-specific and upsampling stages

    def failing(self, batch: TrainBatch, stage: Stage, update: Update) -> dict:
        if batch.step in crashes:
            crashes.remove(batch.step)
            raise DraemError("simulated crash")
        return original(self, batch, stage, update)

    monkeypatch.setattr(DsrModel, "training_step", failing)
    out = tmp_path / "stopped"
    for step, stage in ((3, "general"), (10, "object"), (22, "upsampling")):
        with pytest.raises(DraemError, match="simulated crash"):
            train(config(folder, out, "dsr", options, 24, checkpoint_every=1, resume=step > 3))
        state = torch.load(out / "checkpoint.pt")
        assert state["step"] == step and state["stage"] == stage
    train(config(folder, out, "dsr", options, 24, resume=True))
    expected, got = weights(tmp_path / "straight" / "model.pt"), weights(out / "model.pt")
    assert expected.keys() == got.keys()
    assert all(torch.equal(value, got[key]) for key, value in expected.items())


def test_averaged_weights_leave_the_codebooks_and_the_general_model_as_trained(tmp_path):
    folder = make_folder(tmp_path / "images")
    options = {**TINY_DSR, "restart_after": 2, "general_fraction": 0.5}
    train(config(folder, tmp_path / "plain", "dsr", options, 12, recipe="budget"))
    train(config(folder, tmp_path / "averaged", "dsr", options, 12, recipe="budget", average_weights=True))
    plain, averaged = weights(tmp_path / "plain" / "model.pt"), weights(tmp_path / "averaged" / "model.pt")
    codebooks = [key for key in plain if key.endswith(("_embedding.weight", "_ema_w", "_ema_cluster_size"))]
    general = [key for key in plain if key.startswith("networks.vq.")]
    assert len(codebooks) == 6 and set(codebooks) < set(general)
    assert all(torch.equal(plain[key], averaged[key]) for key in general), "the general stage is not averaged"
    average = torch.load(tmp_path / "averaged" / "checkpoint.pt")["average"]
    assert average and not any(key.startswith("networks.vq.") for key in average)
    assert not all(torch.equal(plain[key], averaged[key]) for key in average), "the later stages are averaged"


def test_codes_unused_for_long_enough_restart_at_encoder_outputs_of_the_batch():
    torch.manual_seed(0)
    vq = DsrGeneralModel(DsrGeneralOptions(**TINY)).vq.train()
    ages = CodeAges(16)
    ages.lo.fill_(4)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    encoded = vq.encode(images)  # training mode: the EMA update counts the codes used
    before = vq.quantizer_lo.codebook.clone()
    used = encoded.lo.indices.unique()
    assert torch.equal(encoded.lo.counts.nonzero().flatten(), used)
    ages.restart_dead(vq, encoded, 5, torch.Generator().manual_seed(1))
    dead = torch.tensor([code for code in range(16) if code not in used.tolist()])
    assert len(dead) and (ages.lo == 0).all() and (ages.hi <= 1).all()
    assert torch.equal(vq.quantizer_lo.codebook[used], before[used]), "used codes stay"
    outputs = encoded.features_lo.permute(0, 2, 3, 1).reshape(-1, 8)
    for code in dead.tolist():
        assert (outputs == vq.quantizer_lo.codebook[code]).all(dim=1).any(), "a dead code moves to an encoder output"
        assert vq.quantizer_lo._ema_cluster_size[code] == 1



@pytest.mark.parametrize("to", ["random", "far"])
def test_both_restart_modes_move_dead_codes_to_encoder_outputs(to):
    torch.manual_seed(0)
    vq = DsrGeneralModel(DsrGeneralOptions(**TINY)).vq.train()
    ages = CodeAges(16)
    ages.lo.fill_(4)
    encoded = vq.encode(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    used = encoded.lo.indices.unique().tolist()
    ages.restart_dead(vq, encoded, 5, torch.Generator().manual_seed(1), to)
    outputs = encoded.features_lo.permute(0, 2, 3, 1).reshape(-1, 8)
    for code in (code for code in range(16) if code not in used):
        assert (outputs == vq.quantizer_lo.codebook[code]).all(dim=1).any()


def test_far_restarts_pick_the_features_the_live_codes_represent_worst():
    near = torch.randn(1000, 4) * 0.01
    far = 5 + torch.randn(20, 4) * 0.01
    features, live = torch.cat([near, far]), torch.zeros(1, 4)
    picks = [restart_picks(features, live, 20, torch.Generator().manual_seed(seed), "far") for seed in range(3)]
    uniform = restart_picks(features, live, 20, torch.Generator().manual_seed(0), "random")
    assert all((p >= 1000).float().mean() > 0.9 for p in picks), "far picks come from the poorly represented region"
    assert all(len(p.unique()) == 20 for p in picks), "without replacement"
    assert (uniform >= 1000).float().mean() < 0.3
    more = restart_picks(far[:3], live, 5, torch.Generator().manual_seed(0), "far")
    assert len(more) == 5 and more.max() < 3, "more dead codes than features: drawn with replacement"


# --------------------------------------------------------------------------------------------------------------------
# The authors' files


def test_import_official_round_trips_the_six_files(tmp_path):
    torch.manual_seed(0)
    model = DsrModel(DsrOptions(**TINY_DSR))
    names = {"vq": "vq_model_pretrained_128_4096.pckl", "subspace_hi": "dsr_subspace_restriction_hi_x.pckl",
             "subspace_lo": "dsr_subspace_restriction_lo_x.pckl", "image_recon": "dsr_image_recon_module_x.pckl",
             "anomaly_det": "dsr_anomaly_det_module_x.pckl", "upsample": "dsr_upsample_module_x.pckl"}
    modules = {"vq": "vq", "subspace_hi": "subspace_hi", "subspace_lo": "subspace_lo", "image_recon": "object_decoder",
               "anomaly_det": "anomaly_detection", "upsample": "upsampling"}
    files = {}
    for key, attribute in modules.items():
        state = getattr(model.networks, attribute).state_dict()
        if key == "image_recon":  # the released files hold a quantiser the authors' code no longer has
            state = {**state, "vq._embedding.weight": torch.zeros(512, 64)}
        files[key] = tmp_path / names[key]
        torch.save(state, files[key])
    flags = [word for key, path in files.items() for word in (f"--{key.replace('_', '-')}", str(path))]
    assert main(["import-official", "--method", "dsr", *flags, "--out", str(tmp_path / "run"), "--image-size",
                 "32"]) == 0
    loaded = load_model(tmp_path / "run")
    assert loaded.info.channel_order == "BGR" and loaded.info.options["codes"] == 16
    assert loaded.info.options["unet_width"] == 8 and loaded.info.options["general_model"] == ""
    imported = loaded.model.state_dict()
    assert all(torch.equal(value, imported[key]) for key, value in model.state_dict().items() if "code_ages" not in key)

    general = import_official("dsr-general", {"vq": files["vq"]}, tmp_path / "general", 32)
    vq = load_model(general).model
    assert isinstance(vq, DsrGeneralModel) and vq.options.codes == 16
    with pytest.raises(DraemError, match="weight unet.encoder.block1.0.weight has shape"):
        DsrModel.from_official({**files, "upsample": files["anomaly_det"]})


# --------------------------------------------------------------------------------------------------------------------
# torchrun: EMA codebooks stay the same in every process


GENERAL_TWICE = textwrap.dedent("""
    import sys

    import torch
    import torch.distributed as dist

    from draem.engine.config import TrainConfig

    from draem.engine.train import train
    from draem.methods.dsr.general import DsrGeneralModel

    folder, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    original = DsrGeneralModel.training_step

    def recording(self, batch, stage, update):
        terms = original(self, batch, stage, update)
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(self.state_dict(), f"{out}/rank{rank}-step{batch.step + 1}.pt")
        return terms

    DsrGeneralModel.training_step = recording
    train(TrainConfig(data=None, normal=folder, out=out, method="dsr-general", max_steps=2, batch_size=batch,
                      image_size=32, validation_fraction=0.0, channels_last=False,
                      options={"codes": 16, "code_width": 8, "hidden_width": 8, "restart_after": 2}))
""")


@pytest.mark.slow
def test_two_gloo_processes_keep_one_codebook_that_of_one_process_with_the_doubled_batch(tmp_path):
    folder = make_folder(tmp_path / "images", count=4)
    script = tmp_path / "general_twice.py"
    script.write_text(GENERAL_TWICE)
    single = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "one"), "4"],
                            capture_output=True, text=True, env=environment(), timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run(torchrun(2, str(script), str(folder), str(tmp_path / "two"), "2"),
                            capture_output=True, text=True, env=environment(), timeout=300)
    assert double.returncode == 0, double.stderr

    def state(run: str, rank: int, step: int) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / f"rank{rank}-step{step}.pt")

    one, two = state("one", 0, 1), state("two", 0, 1)
    for key, value in one.items():  # step 1: EMA of the global batch's counts and sums, averaged gradients
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert (two["code_ages.lo"] == 1).any(), "some codes went unused in step 1"
    # Step 2 restarts the codes unused for two steps from process 0's draws: both processes hold the same model.
    first, second = state("two", 0, 2), state("two", 1, 2)
    assert all(torch.equal(value, second[key]) for key, value in first.items())
    assert (first["code_ages.lo"] == 0).all() and (first["code_ages.hi"] == 0).all()


def test_stage_2_drops_its_rate_at_80_percent_and_stage_3_keeps_it_as_the_authors_code_runs(general_run, tmp_path):
    folder, general = general_run
    options = {**TINY_DSR, "upsampling_share": 0.5, "general_model": str(general / "model.pt")}
    train(config(folder, tmp_path / "run", "dsr", options, 20, recipe="paper"))
    rates = {stage: [float(row["lr"]) for row in rows(tmp_path / "run") if row["stage"] == stage]
             for stage in ("object", "upsampling")}
    assert rates["object"] == [2e-4] * 8 + [pytest.approx(2e-5)] * 2
    assert rates["upsampling"] == [2e-4] * 10


def detector_inputs(hi_codes: str) -> torch.Tensor:
    """The general decoder's images that stage 2's detection module sees on one batch (fixed seeds)."""
    torch.manual_seed(0)
    model = DsrModel(DsrOptions(**TINY_DSR, lo_only_hi_codes=hi_codes))
    model.networks.vq.eval()  # frozen in stage 2, as training leaves it
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model.simulate_latent(TrainBatch(images, None, torch.Generator().manual_seed(2), 0), images).general_image


def test_re_encoded_hi_codes_change_only_some_images_of_the_lo_only_anomalies():
    kept, re_encoded = detector_inputs("kept"), detector_inputs("re-encoded")
    same = [torch.equal(a, b) for a, b in zip(kept, re_encoded, strict=True)]
    assert 0 < sum(same) < len(same), "lo-only images change; images with both or hi-only anomalies do not"


def test_the_upsampling_share_sets_stage_3s_steps_after_the_general_model():
    default = DsrModel(DsrOptions(**TINY_DSR)).stages(100)
    assert [s.name for s in default] == ["general", "object", "upsampling"]
    assert split_steps(100, [s.fraction for s in default]) == [30, 58, 12]  # 1/6 of the 70 after the general model
    half = DsrModel(DsrOptions(**TINY_DSR, upsampling_share=0.5)).stages(100)
    assert split_steps(100, [s.fraction for s in half]) == [30, 35, 35]
    with pytest.raises(DraemError, match="--upsampling-share 1.0: must be in"):
        DsrOptions(upsampling_share=1.0).validate()


def test_latent_anomalies_replace_codes_only_under_their_target():
    torch.manual_seed(0)
    model = DsrModel(DsrOptions(**TINY_DSR))
    model.networks.vq.eval()
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sample = model.simulate_latent(TrainBatch(images, None, torch.Generator().manual_seed(2), 0), images)
    changed_lo = (sample.anomalous_lo != sample.quantized_lo).any(dim=1, keepdim=True).float()
    outside = changed_lo * (1 - pool_mask(sample.target, changed_lo.shape[-2:]))
    assert changed_lo.sum() > 0 and outside.sum() == 0, "lo codes change, and only under the target"
    anomalous = sample.target.flatten(1).amax(dim=1) > 0
    assert 0 < anomalous.sum() < len(images), "some images are anomalous, some clean"
