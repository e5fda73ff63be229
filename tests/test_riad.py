"""RIAD: MSGMS against NumPy, the inpainting masks, the inpainting itself, and a tiny run through the engine."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_category
from scipy import ndimage
from torch import nn

from draem.cli import main
from draem.engine.config import TrainConfig
from draem.engine.evaluate import EvaluationConfig, evaluate
from draem.engine.train import train
from draem.errors import DraemError
from draem.losses import msgms_loss, msgms_map
from draem.methods import get
from draem.methods.base import TrainBatch
from draem.methods.riad import RiadModel, RiadOptions, fixed_masks, inpaint, inpainting_masks, riad_loss

CELLS = (2, 4, 8, 16)


def np_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel bilinear resize of the last two axes (align_corners=False, sources clamped at 0 and n - 1)."""

    def axis_weights(n_in: int, n_out: int) -> np.ndarray:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = src - low
        weights = np.zeros((n_out, n_in))
        np.add.at(weights, (np.arange(n_out), low), 1 - frac)
        np.add.at(weights, (np.arange(n_out), high), frac)
        return weights

    rows, cols = axis_weights(a.shape[-2], height), axis_weights(a.shape[-1], width)
    return np.einsum("ij,...jk,lk->...il", rows, a, cols)


def np_msgms_map(x: np.ndarray, y: np.ndarray, scales: int = 4, c: float = 0.0026) -> np.ndarray:
    """Independent MSGMS map (B, H, W) of (B, C, H, W) arrays: channel-mean grey, zero-padded Prewitt/3."""
    prewitt = np.array([[1.0, 0.0, -1.0]] * 3) / 3

    def magnitude(grey: np.ndarray) -> np.ndarray:
        gx = ndimage.correlate(grey, prewitt, mode="constant", cval=0.0)
        gy = ndimage.correlate(grey, prewitt.T, mode="constant", cval=0.0)
        return np.sqrt(gx**2 + gy**2)

    def pool(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))

    height, width = x.shape[-2:]
    out = np.zeros((x.shape[0], height, width))
    for b in range(x.shape[0]):
        gx, gy = x[b].mean(axis=0), y[b].mean(axis=0)
        for scale in range(scales):
            if scale:
                gx, gy = pool(gx), pool(gy)
            mx, my = magnitude(gx), magnitude(gy)
            out[b] += np_bilinear((2 * mx * my + c) / (mx**2 + my**2 + c), height, width)
    return out / scales


def smooth_pair(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related images in [0, 1]: a blurred random image and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), sigma=(0, 0, 1.0, 1.0))
    y = np.clip(x + rng.normal(0, 0.05, shape), 0, 1)
    return torch.from_numpy(x).float(), torch.from_numpy(y).float()


def test_np_bilinear_matches_a_hand_example() -> None:
    up = np_bilinear(np.array([[0.0, 4.0]]), 1, 4)
    assert up == pytest.approx(np.array([[0.0, 1.0, 3.0, 4.0]]))


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 32, 48)])
def test_msgms_map_matches_numpy(shape: tuple[int, ...]) -> None:
    x, y = smooth_pair(shape, seed=shape[-1])
    expected = np_msgms_map(x.double().numpy(), y.double().numpy())
    got = msgms_map(x, y)
    assert got.shape == (shape[0], *shape[-2:])
    assert np.abs(got.double().numpy() - expected).max() < 1e-5
    assert float(msgms_loss(x, y)) == pytest.approx(1 - expected.mean(), abs=1e-5)
    assert expected.min() < 0.9  # the images differ enough for the comparison to mean something


def test_msgms_of_an_image_with_itself_is_one() -> None:
    x, _ = smooth_pair((1, 3, 32, 32), seed=3)
    assert torch.allclose(msgms_map(x, x), torch.ones(1, 32, 32), atol=1e-6)


def check_partition(masks: torch.Tensor, cell: int) -> None:
    """Masks (3, B, 1, H, W): binary, one copy per pixel, constant per cell, near-equal numbers of cells."""
    copies, batch, _, height, width = masks.shape
    assert copies == 3
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks.sum(dim=0), torch.ones(batch, 1, height, width))
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    padded = torch.nn.functional.pad(masks[:, :, 0], (0, cols * cell - width, 0, rows * cell - height),
                                     mode="replicate")
    cells = padded.reshape(3, batch, rows, cell, cols, cell)
    assert torch.equal(cells, cells[:, :, :, :1, :, :1].expand_as(cells))
    counts = cells[:, :, :, 0, :, 0].sum(dim=(2, 3))
    assert (counts.max(dim=0).values - counts.min(dim=0).values).max() <= 1


@pytest.mark.parametrize("cell", CELLS)
def test_training_masks_partition_the_image_into_cells(cell: int) -> None:
    masks = inpainting_masks(4, (32, 32), cell, torch.Generator().manual_seed(cell))
    check_partition(masks, cell)
    again = inpainting_masks(4, (32, 32), cell, torch.Generator().manual_seed(cell))
    assert torch.equal(masks, again)
    if cell <= 4:
        assert not torch.equal(masks[:, 0], masks[:, 1])


def test_masks_of_a_size_not_divisible_by_the_cell_are_cut_at_the_border() -> None:
    check_partition(inpainting_masks(2, (40, 24), 16, torch.Generator().manual_seed(0)), 16)
    check_partition(fixed_masks((40, 24), 16), 16)


@pytest.mark.parametrize("cell", CELLS)
def test_fixed_masks_are_partitions(cell: int) -> None:
    masks = fixed_masks((32, 32), cell)
    assert masks.shape == (3, 1, 1, 32, 32)
    check_partition(masks, cell)
    assert torch.equal(masks, fixed_masks((32, 32), cell))


class CopyIndexNetwork(nn.Module):
    """Stub: records its input; outputs, for every pixel of copy j of the batch, j - 1 (so j / 2 in [0, 1])."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        copy = torch.arange(len(x)) // self.batch
        return (copy.float() - 1)[:, None, None, None].expand_as(x)


@pytest.mark.parametrize("cell", CELLS)
def test_each_pixel_comes_from_the_copy_that_lacked_it(cell: int) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = inpainting_masks(2, (32, 32), cell, torch.Generator().manual_seed(7))
    network = CopyIndexNetwork(batch=2)
    inpainted = inpaint(network, images, masks)
    assert len(network.inputs) == 1 and network.inputs[0].shape == (6, 3, 32, 32)
    source = (inpainted * 2).round()
    assert torch.equal(source, masks.argmax(dim=0).float().expand(-1, 3, -1, -1))
    seen = network.inputs[0].unflatten(0, (3, 2))
    for j in range(3):
        removed = masks[j].bool().expand(-1, 3, -1, -1)
        assert (seen[j][removed] == 0).all()
        assert torch.equal(seen[j][~removed], (images * 2 - 1)[~removed])


def test_shared_masks_apply_to_every_image() -> None:
    images = torch.rand(3, 3, 32, 32)
    network = CopyIndexNetwork(batch=3)
    inpainted = inpaint(network, images, fixed_masks((32, 32), 4))
    assert torch.equal(inpainted[0], inpainted[1]) and torch.equal(inpainted[0], inpainted[2])


def test_anomaly_maps_do_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = RiadModel(RiadOptions(width=4)).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = model.anomaly_map(images)
        alone = model.anomaly_map(images[2:])
        again = model.anomaly_map(images.flip(0))
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all()
    assert torch.allclose(maps[2], alone[0], atol=1e-6)
    assert torch.allclose(maps, again.flip(0), atol=1e-6)


def test_anomaly_map_averages_one_minus_msgms_over_cell_sizes_then_smooths() -> None:
    torch.manual_seed(0)
    model = RiadModel(RiadOptions(width=4, cell_sizes=(2.0, 8.0), map_smoothing=1)).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = sum(1 - msgms_map(model.inpaint(images, k), images) for k in (2, 8)) / 2
        assert torch.allclose(model.anomaly_map(images), expected, atol=1e-6)
        model.options.map_smoothing = 3
        smoothed = model.anomaly_map(images)
    window = torch.nn.functional.avg_pool2d(expected[:, None], 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(smoothed, window[:, 0], atol=1e-6)


def test_loss_terms_and_weights() -> None:
    images = torch.rand(2, 3, 32, 32)
    zero = riad_loss(images, images)
    assert all(float(v) == pytest.approx(0, abs=1e-6) for v in zero.values())
    other = torch.rand(2, 3, 32, 32)
    terms = riad_loss(other, images, (2.0, 0.5, 3.0))
    assert set(terms) == set(RiadModel.loss_terms)
    total = 2 * terms["msgms"] + 0.5 * terms["ssim"] + 3 * terms["l2"]
    assert float(terms["total"]) == pytest.approx(float(total))
    assert float(terms["l2"]) == pytest.approx(float(((other - images) ** 2).mean()))


def test_training_step_is_reproducible_from_the_generator() -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = RiadModel(RiadOptions(**RiadModel.tiny_options))
        stage = model.stages(10)[0]
        model.train()
        batch = TrainBatch(images, None, torch.Generator().manual_seed(5), step=0)

        def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        terms = model.training_step(batch, stage, update)
        results.append((terms, model.unet.out[0].weight.detach().clone()))
    assert {k: float(v) for k, v in results[0][0].items()} == {k: float(v) for k, v in results[1][0].items()}
    assert torch.equal(results[0][1], results[1][1])
    assert stage.lr == 1e-4 and stage.optimizers["adam"].param_groups[0]["weight_decay"] == 1e-5


def test_unet_shapes_and_widths() -> None:
    model = RiadModel(RiadOptions(width=4))
    assert [m[0].out_channels for m in model.unet.down] == [4, 8, 16, 32, 32]
    out = model.unet(torch.zeros(2, 3, 64, 32))
    assert out.shape == (2, 3, 64, 32) and out.abs().max() <= 1
    assert get("riad") is RiadModel and RiadModel.size_multiple == 32


@pytest.mark.parametrize("options, flag", [({"map_smoothing": 4}, "--map-smoothing"),
                                           ({"cell_sizes": (2.5,)}, "--cell-sizes"),
                                           ({"cell_sizes": ()}, "--cell-sizes"),
                                           ({"width": 0}, "--width"), ({"lr": 0.0}, "--lr"),
                                           ({"weight_decay": -1.0}, "--weight-decay")])
def test_bad_options_are_named(options: dict, flag: str) -> None:
    with pytest.raises(DraemError, match=flag):
        RiadOptions(**options).validate()


def test_cli_builds_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--method", "riad", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--cell-sizes", "--map-smoothing", "--weight-decay", "--width"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("riad")
    data = make_category(root / "widget", train=4, good=2, defects={"spot": 2}, size=32)
    run = root / "run"
    train(TrainConfig(data=str(data), out=str(run), method="riad", options=dict(RiadModel.tiny_options),
                      max_steps=2, batch_size=2, image_size=32, checkpoint_every=1))
    return data, run


def test_tiny_run_trains_and_evaluates(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained_run
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["method"] == "riad" and config["options"]["cell_sizes"] == [2.0, 4.0, 8.0, 16.0]
    with (run / "losses.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r[name])) for r in rows for name in RiadModel.loss_terms)
    metrics = evaluate(EvaluationConfig(run=str(run), data=str(data), out=str(tmp_path)))
    overall = metrics["overall"]
    assert overall["images"] == 4
    assert all(math.isfinite(v) for k, v in overall.items() if v is not None)
    assert overall["pixel_auroc"] is not None


def test_tiny_run_exports_to_onnx(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from draem.deploy.onnx import export_onnx

    _, run = trained_run
    assert export_onnx(run, tmp_path / "riad.onnx").exists()


def test_loss_is_computed_in_fp32_under_autocast() -> None:
    images, other = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    expected = riad_loss(other, images)
    with torch.autocast("cpu", torch.bfloat16):
        got = riad_loss(other.bfloat16(), images)
    assert all(got[k].dtype == torch.float32 for k in got)
    assert float(got["total"]) == pytest.approx(float(expected["total"]), rel=1e-2)
    assert float(got["ssim"]) == pytest.approx(float(riad_loss(other.bfloat16().float(), images)["ssim"]), rel=1e-5)
