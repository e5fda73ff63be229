import json

import pytest
import torch
from conftest import FIXTURES

from draem.methods.draem import DraemModel, DraemOptions
from draem.methods.draem.networks import DiscriminativeSubNetwork, ReconstructiveSubNetwork
from draem.scoring import image_score

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"{FIXTURES} not present")


@needs_fixtures
def test_full_size_state_dict_matches_the_authors_keys_and_shapes():
    expected = json.loads((FIXTURES / "state_dict_keys_full_size.json").read_text())
    model = DraemModel()
    for name, net in (("reconstructive", model.reconstructive), ("discriminative", model.discriminative)):
        ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
        assert ours == [(k, s) for k, s in expected[name]]


def test_parameter_counts_match_the_paper():
    model = DraemModel()
    recon = sum(p.numel() for p in model.reconstructive.parameters())
    seg = sum(p.numel() for p in model.discriminative.parameters())
    assert round(recon / 1e6, 2) == 69.05
    assert round(seg / 1e6, 2) == 28.37


@needs_fixtures
def test_official_checkpoints_load_strictly_and_reproduce_outputs():
    recon, seg = ReconstructiveSubNetwork(base_width=8), DiscriminativeSubNetwork(base_channels=4)
    recon.load_state_dict(torch.load(FIXTURES / "recon_base_width_8.pckl", map_location="cpu"), strict=True)
    seg.load_state_dict(torch.load(FIXTURES / "seg_base_channels_4.pckl", map_location="cpu"), strict=True)
    expected = torch.load(FIXTURES / "expected_io.pt")
    recon.eval(), seg.eval()
    with torch.no_grad():
        reconstruction = recon(expected["input"])
        logits = seg(torch.cat((reconstruction, expected["input"]), dim=1))
    torch.testing.assert_close(reconstruction, expected["reconstruction"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, expected["segmentation_logits"], atol=1e-5, rtol=0)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = DraemModel(DraemOptions(recon_width=16, seg_width=8))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    bn_weights = torch.cat([b.weight for b in bns])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)


def test_predict_gives_softmax_map_and_mean_filtered_max():
    model = DraemModel(DraemOptions(recon_width=4, seg_width=4)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, logits = model(x)
        anomaly_map, score = model.predict(x)
    expected_map = torch.softmax(logits, dim=1)[:, 1]
    torch.testing.assert_close(anomaly_map, expected_map)
    padded = torch.nn.functional.pad(expected_map, (10, 10, 10, 10))
    windows = padded.unfold(1, 21, 1).unfold(2, 21, 1).mean(dim=(-1, -2))
    torch.testing.assert_close(score, windows.flatten(1).amax(1))


def test_valid_region_limits_the_image_score():
    anomaly_map = torch.full((1, 64, 64), 0.5)
    anomaly_map[0, :, :32] = 1.0
    valid = torch.zeros(1, 64, 64, dtype=torch.bool)
    valid[:, :, 32:] = True
    score = image_score(anomaly_map, valid)
    assert score.item() == pytest.approx(0.5, abs=1e-6)
    assert image_score(anomaly_map).item() == pytest.approx(1.0, abs=1e-6)


def test_image_score_window_is_configurable():
    anomaly_map = torch.rand(2, 40, 40)
    padded = torch.nn.functional.pad(anomaly_map, (2, 2, 2, 2))
    expected = padded.unfold(1, 5, 1).unfold(2, 5, 1).mean(dim=(-1, -2)).flatten(1).amax(1)
    torch.testing.assert_close(image_score(anomaly_map, window=5), expected)
    torch.testing.assert_close(image_score(anomaly_map, window=1), anomaly_map.flatten(1).amax(1))
