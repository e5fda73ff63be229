import pytest
import torch

from draem.synthesis.simulator import SimulationConfig, blend, simulate_anomalies
from draem.synthesis.sources import procedural_textures


def batch(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 3, size, size)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


def test_blend_follows_the_formula_inside_and_outside_the_mask():
    images, sources = batch(16, seed=1)
    sim = simulate_anomalies(images, sources, torch.Generator().manual_seed(3))
    mask = sim.mask.bool().expand_as(images)
    assert torch.equal(sim.augmented[~mask], sim.target[~mask])
    beta = sim.beta.view(-1, 1, 1, 1)
    expected = (1 - beta) * sim.source + beta * sim.target
    torch.testing.assert_close(sim.augmented[mask], expected.expand_as(images)[mask])
    assert sim.has_anomaly.any() and (~sim.has_anomaly).any()
    assert ((sim.beta >= 0) & (sim.beta <= 0.8)).all()


def test_blend_function_on_hand_values():
    image, source = torch.full((1, 3, 2, 2), 0.2), torch.full((1, 3, 2, 2), 1.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    out = blend(image, source, mask, torch.tensor([0.25]))
    assert out[0, 0, 0, 0].item() == pytest.approx(0.75 * 1.0 + 0.25 * 0.2)
    assert out[0, 0, 1, 1].item() == pytest.approx(0.2)


def test_half_the_samples_are_clean_and_a_third_are_rotated():
    generator = torch.Generator().manual_seed(0)
    images, sources = batch(2000, size=64)
    sim = simulate_anomalies(images, sources, generator)
    assert sim.anomaly_drawn.float().mean().item() == pytest.approx(0.5, abs=0.05)
    clean = (sim.mask.flatten(1).amax(1) == 0)
    assert clean.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert (clean & sim.anomaly_drawn).float().mean().item() < 0.05
    assert torch.equal(sim.augmented[clean], sim.target[clean])
    assert torch.equal(clean, ~sim.has_anomaly)
    rotated = (sim.target != images).flatten(1).any(1).float().mean().item()
    assert rotated == pytest.approx(0.3, abs=0.04)
    coverage = sim.mask[~clean].mean().item()
    assert 0.02 < coverage < 0.15


def test_masks_are_binary_and_deterministic_under_a_seed():
    images, sources = batch(8)
    first = simulate_anomalies(images, sources, torch.Generator().manual_seed(7))
    second = simulate_anomalies(images, sources, torch.Generator().manual_seed(7))
    other = simulate_anomalies(images, sources, torch.Generator().manual_seed(8))
    assert set(first.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first.augmented, second.augmented) and torch.equal(first.mask, second.mask)
    assert not torch.equal(first.augmented, other.augmented)


def test_no_anomalies_when_disabled():
    images, sources = batch(8)
    config = SimulationConfig(anomaly_prob=0.0, image_rotation_prob=0.0)
    sim = simulate_anomalies(images, sources, torch.Generator().manual_seed(0), config)
    assert torch.equal(sim.augmented, images) and sim.mask.sum() == 0


def test_procedural_textures_are_structured_and_varied():
    textures = procedural_textures(32, 64, torch.Generator().manual_seed(0))
    assert textures.shape == (32, 3, 64, 64)
    assert textures.min() >= 0 and textures.max() <= 1
    grey = textures.mean(1)
    centred = grey - grey.mean(dim=(1, 2), keepdim=True)
    variance = centred.pow(2).mean((1, 2)).clamp(min=1e-8)
    neighbour = (centred[:, :, 1:] * centred[:, :, :-1]).mean((1, 2)) / variance
    assert neighbour.median() > 0.5, "textures should be spatially smooth patterns, not white noise"
    assert textures.flatten(1).std(0).mean() > 0.1, "samples should differ"
    again = procedural_textures(32, 64, torch.Generator().manual_seed(0))
    assert torch.equal(textures, again)
