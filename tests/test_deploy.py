import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, make_category

from draem.cli import main
from draem.data import datasets
from draem.deploy.onnx import InferenceGraph, OnnxRuntimeModel, export_onnx, max_difference
from draem.deploy.quantize import export_int8
from draem.engine.config import TrainConfig
from draem.engine.devices import autocast, cpu_has_native_bf16, resolve_precision
from draem.engine.inference import Predictor
from draem.engine.run import load_model
from draem.engine.train import train
from draem.errors import DraemError

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"{FIXTURES} not present")
RECON, SEG = FIXTURES / "recon_base_width_8.pckl", FIXTURES / "seg_base_channels_4.pckl"


@needs_fixtures
def test_official_checkpoints_import_and_receive_bgr(tmp_path, capsys):
    assert main(["import-official", "--recon", str(RECON), "--seg", str(SEG), "--out", str(tmp_path / "run"),
                 "--image-size", "64"]) == 0
    loaded = load_model(tmp_path / "run")
    assert loaded.info.channel_order == "BGR"
    assert (loaded.info.options["recon_width"], loaded.info.options["seg_width"]) == (8, 4)
    assert loaded.info.resize == "authors"
    expected = torch.load(FIXTURES / "expected_io.pt")
    bgr = expected["input"]
    predictor = Predictor(loaded, torch.device("cpu"), "fp32")
    anomaly_map, _ = predictor(bgr.flip(1))
    reference = torch.softmax(expected["segmentation_logits"], dim=1)[:, 1]
    torch.testing.assert_close(anomaly_map, reference, atol=1e-5, rtol=0)
    wrong_order, _ = predictor(bgr)
    assert (wrong_order - reference).abs().max() > 1e-3


@needs_fixtures
@pytest.mark.parametrize("recon, seg, message", [
    (SEG, RECON, "did you swap --recon and --seg"),
    (RECON, RECON, "did you swap --seg and --recon"),
])
def test_official_import_catches_swapped_files(tmp_path, capsys, recon, seg, message):
    assert main(["import-official", "--recon", str(recon), "--seg", str(seg), "--out", str(tmp_path)]) != 0
    assert message in capsys.readouterr().err


@needs_fixtures
def test_official_import_catches_truncated_and_foreign_files(tmp_path, capsys):
    truncated = tmp_path / "cut.pckl"
    truncated.write_bytes(RECON.read_bytes()[:5000])
    assert main(["import-official", "--recon", str(truncated), "--seg", str(SEG),
                 "--out", str(tmp_path / "a")]) != 0
    assert "cut.pckl: cannot read checkpoint" in capsys.readouterr().err
    odd = tmp_path / "odd.pckl"
    state = torch.load(RECON)
    state["encoder.block1.0.weight"] = torch.zeros(8, 3, 5, 5)
    torch.save(state, odd)
    assert main(["import-official", "--recon", str(odd), "--seg", str(SEG),
                 "--out", str(tmp_path / "b")]) != 0
    assert "odd.pckl: weight encoder.block1.0.weight has shape (8, 3, 5, 5)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    data = make_category(root / "widget")
    train(TrainConfig(data=str(data), out=str(root / "run"), max_steps=1, batch_size=2, image_size=64,
                      options={"recon_width": 4, "seg_width": 4}))
    return data, root / "run"


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tiny_run, tmp_path):
    _, run = tiny_run
    path = export_onnx(run, tmp_path / "model.onnx")
    runtime = OnnxRuntimeModel(path)
    graph = InferenceGraph(load_model(run))
    for batch in (1, 5):
        assert max_difference(graph, runtime, torch.rand(batch, 3, 64, 64)) <= 1e-4


def test_predict_and_test_run_on_onnxruntime(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    assert main(["predict", "--run", str(run), str(data / "test" / "good"), "--out", str(tmp_path / "p"),
                 "--backend", "onnxruntime"]) == 0
    assert (run / "model.onnx").exists()
    ours = Predictor(load_model(run), torch.device("cpu"), "fp32")
    onnx = Predictor(load_model(run), torch.device("cpu"), "fp32", backend="onnxruntime")
    images = torch.rand(3, 3, 64, 64)
    for a, b in zip(ours(images), onnx(images), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_openvino_backend_matches_pytorch_and_is_recorded(tiny_run, tmp_path):
    data, run = tiny_run
    assert main(["predict", "--run", str(run), str(data / "test" / "good"), "--out", str(tmp_path / "p"),
                 "--backend", "openvino", "--precision", "fp32"]) == 0
    with (tmp_path / "p" / "predictions.csv").open() as stream:
        assert {row["backend"] for row in csv.DictReader(stream)} == {"openvino"}
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "test"),
                 "--backend", "openvino", "--precision", "fp32"]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert (metrics["backend"], metrics["precision"]) == ("openvino", "fp32")
    assert "backend: openvino" in (tmp_path / "test" / "report.html").read_text()
    ours = Predictor(load_model(run), torch.device("cpu"), "fp32")
    openvino = Predictor(load_model(run), torch.device("cpu"), "fp32", backend="openvino")
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 64)
        for a, b in zip(ours(images), openvino(images), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_openvino_runs_bf16_exactly_where_the_cpu_computes_it(tiny_run):
    _, run = tiny_run
    exact = Predictor(load_model(run), torch.device("cpu"), "fp32", backend="openvino")
    fast = Predictor(load_model(run), torch.device("cpu"), "bf16", backend="openvino")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    (exact_maps, exact_scores), (fast_maps, fast_scores) = exact(images), fast(images)
    if cpu_has_native_bf16():
        assert fast.precision == "bf16"
        assert 0 < float((exact_maps - fast_maps).abs().max()) <= 0.05, "bf16 moves the map, a little"
    else:
        assert fast.precision == "fp32", "the precision recorded is the one OpenVINO ran"
        torch.testing.assert_close(fast_maps, exact_maps, atol=1e-6, rtol=0)
    assert float((exact_scores - fast_scores).abs().max()) <= 0.05


def test_openvino_backend_without_openvino_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    data, run = tiny_run
    fresh = tmp_path / "run"
    fresh.mkdir()
    shutil.copy2(run / "model.pt", fresh / "model.pt")
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["predict", "--run", str(fresh), str(data / "test" / "good"), "--out", str(tmp_path / "p"),
                 "--backend", "openvino"]) != 0
    assert "the openvino backend needs OpenVINO: pip install 'draem[openvino]'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists(), "nothing written before the backend is ready"
    assert not (fresh / "model.onnx").exists(), "no export for a runtime that is not there"


def float_convolutions_of(path: Path) -> list[bool]:
    """For each convolution of an int8 graph, in order: whether its weights stayed float32."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    produced_by = {output: node.op_type for node in nodes for output in node.output}
    return [produced_by.get(node.input[1]) != "DequantizeLinear" for node in nodes if node.op_type == "Conv"]


def test_int8_graph_keeps_the_image_side_and_the_last_convolution_float_and_stays_near_fp32(tiny_run, tmp_path,
                                                                                            monkeypatch):
    import onnx

    data, run = tiny_run
    seen = []
    original = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda path: seen.append(Path(path)) or original(path))
    path = export_int8(run, tmp_path / "model.int8.onnx")
    assert seen and all(p.parent == data / "train" / "good" for p in seen), "calibration reads training images only"
    nodes = list(onnx.load(str(path)).graph.node)
    produced_by = {output: node for node in nodes for output in node.output}
    reads_image = ["image" in (produced_by[n.input[0]].input if n.input[0] in produced_by else [n.input[0]])
                   for n in nodes if n.op_type == "Conv"]
    assert sum(reads_image) == 2 and reads_image[0], "DRAEM's two networks each open with a convolution of the image"
    last_only = [False] * (len(reads_image) - 1) + [True]
    assert float_convolutions_of(path) == [*reads_image[:-1], True]
    assert float_convolutions_of(export_int8(run, tmp_path / "tail.int8.onnx", image_side=False)) == last_only
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    exact, fast = OnnxRuntimeModel(export_onnx(run, tmp_path / "model.onnx"))(images), OnnxRuntimeModel(path)(images)
    assert float((exact[0] - fast[0]).abs().max()) <= 0.02 and float((exact[1] - fast[1]).abs().max()) <= 0.02


def test_the_int8_backend_is_recorded_in_predictions_and_the_report(tiny_run, tmp_path):
    data, run = tiny_run
    out = tmp_path / "predictions"
    assert main(["predict", "--run", str(run), str(data / "test" / "good"), "--out", str(out),
                 "--backend", "onnxruntime-int8"]) == 0
    assert (run / "model.int8.onnx").exists(), "quantised on first use"
    with (out / "predictions.csv").open() as stream:
        assert {row["backend"] for row in csv.DictReader(stream)} == {"onnxruntime-int8"}
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "test"),
                 "--backend", "onnxruntime-int8"]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert (metrics["backend"], metrics["precision"]) == ("onnxruntime-int8", "int8")
    assert "backend: onnxruntime-int8" in (tmp_path / "test" / "report.html").read_text()


def test_calibration_needs_int8_and_old_graphs_are_refused(tiny_run, tmp_path, capsys):
    import onnx

    _, run = tiny_run
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.onnx"), "--calibration", str(tmp_path)]) == 2
    assert "--calibration is only used with --int8" in capsys.readouterr().err
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])  # an older graph: image only
    copy = helper.make_tensor_value_info("copy", TensorProto.FLOAT, [1, 3, 8, 8])
    old = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["copy"])], "old", [image],
                                              [copy]), opset_imports=[helper.make_opsetid("", 18)])
    old.ir_version = 9
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(DraemError, match="old.onnx: a graph with inputs"):
        OnnxRuntimeModel(tmp_path / "old.onnx")


def test_bf16_is_chosen_only_where_native(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16\n")
    assert cpu_has_native_bf16.__wrapped__(flags)
    flags.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16.__wrapped__(flags)
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the bf16 autocast asked of a CPU-only build
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_on_cuda_turns_tf32_off_and_restores_it(precision):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with autocast(torch.device("cuda"), precision):
            inside = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        assert inside == ((False, False) if precision == "fp32" else (True, True))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fast_path_stays_close_to_the_exact_path(tiny_run):
    _, run = tiny_run
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    exact = Predictor(load_model(run), torch.device("cpu"), "fp32")(images)
    fast = Predictor(load_model(run), torch.device("cpu"), "bf16")(images)
    assert (exact[0] - fast[0]).abs().max() <= 0.01
    assert (exact[1] - fast[1]).abs().max() <= 0.01
