"""DSR networks: the authors' state-dict layout, their test-time outputs at small size, the EMA codebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from draem.methods.dsr.networks import DsrConfig, DsrNetworks, VectorQuantizerEMA, dsr_inference

FIXTURE = Path("/work/shared/fixtures/official-dsr")
MODULES = ("vq", "subspace_hi", "subspace_lo", "object_decoder", "anomaly_detection", "upsampling")
# The two U-Nets' logits are ill-conditioned in fp32 at these random weights (InstanceNorm of near-constant channels):
# the authors' own code, run here, differs from the fixture by 1.5e-4 and 6.6e-4 there, as does a float64 run
# (1.3e-4, 5.7e-4), while matching this implementation bit for bit. A wrong layout moves them by more than 1.
TOLERANCE = {"anomaly_detection_logits": 1e-3, "upsampling_logits": 1e-3}


def recipe_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The fixture README's deterministic weights: key i (sorted) gets randn seeded i, scaled, cluster sizes abs + 1."""
    state = {}
    for index, (key, value) in enumerate(sorted(module.state_dict().items())):
        scale = 1.0 if key.endswith(("_embedding.weight", "_ema_w")) else 0.1
        tensor = torch.randn(value.shape, generator=torch.Generator().manual_seed(index)) * scale
        if key.endswith("_ema_cluster_size"):
            tensor = tensor.abs() + 1
        state[key] = tensor
    return state


@pytest.fixture(scope="module")
def full_size() -> dict:
    return json.loads((FIXTURE / "state_dict_keys_full_size.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE / "expected_io.pt")


def test_full_size_state_dicts_match_the_authors(full_size: dict) -> None:
    assert full_size["config"] == {"num_hiddens": 128, "num_residual_layers": 2, "num_residual_hiddens": 64,
                                   "num_embeddings": 4096, "embedding_dim": 128}
    networks = DsrNetworks(DsrConfig(**full_size["config"]))
    for name in MODULES:
        module = getattr(networks, name)
        ours = [(key, list(value.shape)) for key, value in module.state_dict().items()]
        theirs = [(key, shape) for key, shape in full_size["state_dict"][name].items()]
        assert ours == theirs, name  # same keys, same shapes, same order
        assert sum(p.numel() for p in module.parameters()) == full_size["parameters"][name], name
        # A checkpoint in the authors' layout loads strictly.
        module.load_state_dict({key: torch.zeros(shape) for key, shape in theirs}, strict=True)


def test_small_config_reproduces_the_authors_test_time_outputs(expected: dict) -> None:
    networks = DsrNetworks(DsrConfig(**expected["small_config"]))
    for name in MODULES:
        module = getattr(networks, name)
        module.load_state_dict(recipe_state_dict(module), strict=True)
    networks.eval()
    with torch.no_grad():
        outputs = dsr_inference(networks, expected["input"])
    reference = {key: value for key, value in expected.items() if key not in ("small_config", "input")}
    assert set(outputs) == set(reference)
    for key, value in reference.items():
        assert outputs[key].shape == value.shape, key
        difference = (outputs[key] - value).abs().max().item()
        assert difference <= TOLERANCE.get(key, 1e-4), f"{key}: max abs difference {difference:.3g}"
    # Eval mode leaves both codebooks alone.
    fresh = recipe_state_dict(networks.vq)
    for key, value in networks.vq.state_dict().items():
        assert torch.equal(value, fresh[key]), key


def make_quantizer() -> tuple[VectorQuantizerEMA, torch.Tensor]:
    """A 2-D codebook of four codes with consistent EMA sums (cluster size 1), and features near code 0 and code 3."""
    quantizer = VectorQuantizerEMA(4, 2, commitment_cost=0.25, decay=0.99)
    codes = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    with torch.no_grad():
        quantizer._embedding.weight.copy_(codes)
        quantizer._ema_w.copy_(codes)
        quantizer._ema_cluster_size.fill_(1.0)
    features = torch.tensor([[1.0, 1.0], [1.0, 0.5], [0.5, 1.0], [4.0, -4.0]])  # three near code 0, one near code 3
    return quantizer, features.t().reshape(1, 2, 2, 2)


def test_quantizer_lookup_distances_and_straight_through_gradient() -> None:
    quantizer, inputs = make_quantizer()
    quantizer.eval()
    inputs.requires_grad_(True)
    out = quantizer(inputs)
    assert out.indices.tolist() == [[[0, 0], [0, 3]]]
    flat = inputs.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.allclose(out.quantized.detach().permute(0, 2, 3, 1).reshape(-1, 2), quantizer.codebook[[0, 0, 0, 3]])
    assert torch.allclose(out.loss, 0.25 * ((flat - quantizer.codebook[[0, 0, 0, 3]]) ** 2).mean())
    out.quantized.sum().backward()
    assert torch.equal(inputs.grad, torch.ones_like(inputs))  # straight-through estimator
    distances = quantizer.distances(inputs)
    assert torch.allclose(distances.reshape(-1, 4), torch.cdist(flat, quantizer.codebook) ** 2, atol=1e-4)
    ranked_distances, ranked = quantizer.rank_codes(inputs, 4)
    assert ranked[0, 0, 1].tolist() == [0, 1, 3, 2]  # (1, 0.5): squared distances 1.25, 36.25, 56.25, 46.25
    assert (ranked_distances.diff(dim=-1) >= 0).all()
    assert torch.allclose(quantizer.lookup(out.indices), out.quantized.detach())


def test_ema_update_moves_used_codes_in_training_and_nothing_in_eval() -> None:
    quantizer, inputs = make_quantizer()
    before = quantizer.state_dict()
    before = {key: value.clone() for key, value in before.items()}
    quantizer.eval()
    quantizer(inputs)
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key

    quantizer.train()
    out = quantizer(inputs)
    used = before["_embedding.weight"][[0, 0, 0, 3]]
    assert torch.equal(out.quantized.detach().permute(0, 2, 3, 1).reshape(-1, 2), used)  # the codes before the update
    after = quantizer.codebook
    flat = inputs.permute(0, 2, 3, 1).reshape(-1, 2)
    target0, target3 = flat[:3].mean(0), flat[3]
    assert (after[0] - target0).norm() < (before["_embedding.weight"][0] - target0).norm() - 1e-3
    assert (after[3] - target3).norm() < (before["_embedding.weight"][3] - target3).norm() - 1e-3
    # Unused codes keep their place (their sums decay together); the counts follow the assignments.
    assert torch.allclose(after[1:3], before["_embedding.weight"][1:3], atol=1e-3)
    size = quantizer._ema_cluster_size
    assert size[0] > size[3] > size[1] and torch.allclose(size.sum(), torch.tensor(4.0 * 0.99 + 4 * 0.01))
    # The authors' update, step by step.
    counts = torch.tensor([3.0, 0.0, 0.0, 1.0])
    raw = 0.99 * torch.ones(4) + 0.01 * counts
    smoothed = (raw + 1e-5) / (raw.sum() + 4e-5) * raw.sum()
    dw = torch.zeros(4, 2).index_add_(0, torch.tensor([0, 0, 0, 3]), flat)
    ema_w = 0.99 * before["_ema_w"] + 0.01 * dw
    assert torch.allclose(size, smoothed)
    assert torch.allclose(quantizer._ema_w, ema_w)
    assert torch.allclose(after, ema_w / smoothed.unsqueeze(1))
