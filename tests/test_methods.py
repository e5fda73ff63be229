"""The engine's promises, checked for every registered method with its tiny options."""

import csv
import html
import json
import signal
import subprocess
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_category
from PIL import Image
from test_distributed import environment, torchrun
from test_train import run_cli, wait_for_rows

from draem import methods
from draem.cli import main
from draem.data.datasets import TrainImages
from draem.deploy.onnx import InferenceGraph, OnnxRuntimeModel, export_onnx, max_difference
from draem.deploy.openvino import OpenVinoModel
from draem.deploy.quantize import quantize, run_training_images
from draem.engine.config import TrainConfig, prepare
from draem.engine.run import load_model
from draem.engine.sampling import epoch_batches, training_batch
from draem.engine.train import activate, train
from draem.methods import processes as method_processes
from draem.methods.base import TrainBatch, split_steps

METHODS = methods.available()
SIZE = 32
INT8_SCORE_BOUND = 0.01


def tiny_flags(name: str) -> list[str]:
    """The command-line flags of a method's tiny options."""
    flags = ["--method", name]
    for key, value in methods.get(name).tiny_options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            flags += [flag, *(map(str, value) if isinstance(value, tuple) else [str(value)])]
    return flags


def common_flags(name: str) -> list[str]:
    return ["--image-size", str(SIZE), "--batch-size", "2", *tiny_flags(name)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu")["state_dict"]


@pytest.fixture(scope="module", params=METHODS)
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    data = make_category(root / "widget", train=8)
    run = root / "run"
    flags = common_flags(request.param)
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "3", *flags]) == 0
    return request.param, data, run


def test_every_method_is_described_and_builds_with_its_defaults():
    assert "draem" in METHODS and "riad" in METHODS
    for name in METHODS:
        method = methods.get(name)
        assert method.name == name and method.paper and method.headline and "total" in method.loss_terms
        method.Options().validate()
        method.Options(**method.tiny_options).validate()


def test_help_lists_the_methods_options(capsys):
    for name in METHODS:
        with pytest.raises(SystemExit):
            main(["train", "--method", name, "--help"])
        text = capsys.readouterr().out
        assert f"options of method {name}" in text and "(default:" in text
        for key in methods.get(name).tiny_options:
            assert "--" + key.replace("_", "-") in text


def test_methods_command_lists_papers_and_figures(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert name in out and methods.get(name).headline in out
        assert f"paper length {methods.get(name).paper_length}; presets full" in out


def test_unknown_method_is_one_line(tmp_path, capsys):
    assert main(["train", "--method", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "--method nope: unknown method" in err and err.count("\n") == 1


def test_run_records_the_method_and_its_loss_columns(trained):
    name, _, run = trained
    saved = torch.load(run / "model.pt")
    assert saved["format"] == "draem-model/2" and saved["info"]["method"] == name
    header = (run / "losses.csv").read_text().splitlines()[0].split(",")
    model = load_model(run).model
    assert header == ["step", "epoch", "stage", "lr", *model.loss_names(), "images_per_s"]
    assert json.loads((run / "config.json").read_text())["train"]["method"] == name


def test_test_writes_metrics_for_every_method(trained):
    name, data, run = trained
    assert main(["test", "--run", str(run), "--data", str(data), "--precision", "fp32"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == name
    assert 0 <= metrics["overall"]["image_auroc"] <= 1 and 0 <= metrics["overall"]["pixel_auroc"] <= 1
    assert html.escape(methods.get(name).report_note) in (run / "report.html").read_text()


def test_predict_writes_maps_for_every_method(trained, tmp_path):
    _, data, run = trained
    out = tmp_path / "predictions"
    assert main(["predict", "--run", str(run), str(data / "test" / "spot"), "--out", str(out)]) == 0
    with (out / "predictions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 and not any(row["error"] for row in rows)
    for row in rows:
        anomaly_map = np.asarray(Image.open(row["map"]))
        assert anomaly_map.shape == (40, 40) and anomaly_map.dtype == np.uint16, "16-bit, at the image's own size"


def test_onnx_export_matches_pytorch_for_every_method(trained, tmp_path):
    _, _, run = trained
    path = export_onnx(run, tmp_path / "model.onnx")
    graph = InferenceGraph(load_model(run))
    runtime = OnnxRuntimeModel(path)
    tolerance = graph.model.float32_tolerance
    assert tolerance <= 1e-3
    for batch in (1, 3):
        assert max_difference(graph, runtime, torch.rand(batch, 3, SIZE, SIZE)) <= tolerance
    padded = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    padded[1, :, SIZE // 2:] = False  # an image fitted by padding: the score ignores the padding in both
    assert max_difference(graph, runtime, torch.rand(2, 3, SIZE, SIZE), padded) <= tolerance
    assert max_difference(graph, OpenVinoModel(path, "fp32"), torch.rand(2, 3, SIZE, SIZE), padded) <= tolerance


def test_int8_graph_runs_for_every_method(trained, tmp_path):
    """Quantised on the run's training images, the graph runs and its scores stay near the fp32 graph's on them.
    (Maps are not bounded here: DSR's quantiser picks another code where int8 moves a feature, which moves a
    pixel of its map by up to 0.33 on this tiny run; test_deploy bounds DRAEM's maps.)"""
    _, _, run = trained
    training = TrainImages(run_training_images(run), SIZE, "resize")
    graph = export_onnx(run, tmp_path / "model.onnx")
    fp32, int8 = OnnxRuntimeModel(graph), OnnxRuntimeModel(quantize(graph, tmp_path / "model.int8.onnx", training))
    images = torch.stack([training[i, 0]["image"] for i in range(2)])
    (exact_maps, exact_scores), (fast_maps, fast_scores) = fp32(images), int8(images)
    assert fast_maps.shape == exact_maps.shape and bool(torch.isfinite(fast_maps).all())
    assert float((exact_scores - fast_scores).abs().max()) <= INT8_SCORE_BOUND


def test_scores_do_not_depend_on_the_batch(trained):
    """In float64, so that oneDNN's batch-dependent float32 kernels (1e-4 apart on a deep net) hide nothing."""
    _, _, run = trained
    model = load_model(run).model.double()
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        together = model.predict(images)
        alone = [model.predict(images[i:i + 1]) for i in range(4)]
    torch.testing.assert_close(together[0], torch.cat([a[0] for a in alone]), atol=1e-7, rtol=0)
    torch.testing.assert_close(together[1], torch.cat([a[1] for a in alone]), atol=1e-7, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_killed_run_resumes_to_the_same_model(name, tmp_path):
    data = make_category(tmp_path / "widget", train=8)
    common = ["--data", str(data), "--max-steps", "8", "--checkpoint-every", "2", *common_flags(name)]
    straight = run_cli("train", "--out", str(tmp_path / "straight"), *common)
    assert straight.wait(180) == 0, straight.stderr.read()
    out = tmp_path / "killed"
    killed = run_cli("train", "--out", str(out), *common)
    wait_for_rows(out / "losses.csv", 3, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert not (out / "model.pt").exists()
    resumed = run_cli("train", "--out", str(out), "--resume")
    assert resumed.wait(180) == 0, resumed.stderr.read()
    expected, got = weights(tmp_path / "straight" / "model.pt"), weights(out / "model.pt")
    assert all(torch.equal(v, got[k]) for k, v in expected.items())
    assert not list(out.glob(".*.tmp")), "stale temporary files of the killed run are removed"
    steps = [line.split(",")[0] for line in (out / "losses.csv").read_text().splitlines()[1:]]
    assert steps == [str(step) for step in range(1, 9)]


GRADIENT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from draem.engine.config import TrainConfig
    from draem.engine.train import train

    data, out, name, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    train(TrainConfig(data=data, out=out, method=name, options=options, max_steps=1, batch_size=2,
                      image_size=32, validation_fraction=0.0, channels_last=False, recipe="paper"))
    threads = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")]
    Path(out, f"threads-{os.environ['RANK']}.txt").write_text(" ".join(threads))
""")


def first_stage(stages: list) -> object:
    """The stage the first step of a one-step run belongs to (earlier stages may get no steps)."""
    counts = split_steps(1, [stage.fraction for stage in stages])
    return next(stage for stage, count in zip(stages, counts, strict=True) if count)


class ThreadProcesses:
    """Two threads standing in for two processes in `processes.sum_over_processes` and `share_first_process`."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2)
        self.local = threading.local()
        self.slots: list[list[torch.Tensor]] = [[], []]

    def _exchange(self, tensors: tuple[torch.Tensor, ...]) -> list[list[torch.Tensor]]:
        self.slots[self.local.rank] = [t.detach().clone() for t in tensors]
        self.barrier.wait()
        seen = [list(slot) for slot in self.slots]
        self.barrier.wait()
        return seen

    def sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        first, second = self._exchange((tensor,))
        tensor.copy_(first[0] + second[0])
        return tensor

    def share_first_process(self, *tensors: torch.Tensor) -> None:
        first, _ = self._exchange(tensors)
        for tensor, value in zip(tensors, first, strict=True):
            tensor.data.copy_(value)


def replay_two_processes(config: TrainConfig, method: type, data: Path,
                         monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Rank 0's weights after one step of two simulated processes: two model copies in two threads, their
    gradients averaged at every optimiser step and state a method sums over processes summed over the threads,
    each fed its shard and its own random draws."""
    processes = ThreadProcesses()
    monkeypatch.setattr(method_processes, "sum_over_processes", processes.sum_over_processes)
    monkeypatch.setattr(method_processes, "share_first_process", processes.share_first_process)
    copies = []
    for _ in range(2):
        torch.manual_seed(config.seed)
        copies.append(method(method.Options.from_dict(config.options)))
    stages = [first_stage(copy.stages(1)) for copy in copies]
    paths = sorted((data / "train" / "good").glob("*.png"))
    dataset = TrainImages(paths, SIZE, "resize")
    pairs = epoch_batches(len(paths), 0, 4, config.seed, 0, drop_partial=True)[0]
    barrier = threading.Barrier(2)

    def update_of(rank: int):
        def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            barrier.wait()
            if rank == 0:
                name = next(n for n, o in stages[0].optimizers.items() if o is optimizer)
                groups = zip(optimizer.param_groups, stages[1].optimizers[name].param_groups, strict=True)
                for first, second in groups:
                    for a, b in zip(first["params"], second["params"], strict=True):
                        if a.grad is not None:
                            mean = (a.grad + b.grad) / 2
                            a.grad, b.grad = mean.clone(), mean.clone()
            barrier.wait()
            optimizer.step()
        return update

    def run(rank: int) -> None:
        processes.local.rank = rank
        loader = {"image": torch.stack([dataset[p]["image"] for p in pairs[2 * rank:2 * rank + 2]])}
        batch = training_batch(loader, config, method, 0, rank, torch.device("cpu"), torch.contiguous_format)
        activate(copies[rank], stages[rank])
        copies[rank].training_step(batch, stages[rank], update_of(rank))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        torch.set_num_threads(previous)
    return copies[0].state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_two_gloo_processes_average_the_gradients_of_their_shards(name, tmp_path, monkeypatch):
    data = make_category(tmp_path / "widget", train=4)
    script = tmp_path / "train_once.py"
    script.write_text(GRADIENT_SCRIPT)
    options = methods.get(name).tiny_options
    done = subprocess.run(torchrun(2, str(script), str(data), str(tmp_path / "two"), name, json.dumps(options)),
                          capture_output=True, text=True, env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):  # gloo's threads would otherwise outlive the group and may abort the exit
        assert "gloo" not in (tmp_path / "two" / f"threads-{rank}.txt").read_text(), "process group left running"
    config, method = prepare(TrainConfig.from_dict(json.loads((tmp_path / "two" / "config.json").read_text())["train"]))
    two = torch.load(tmp_path / "two" / "checkpoint.pt")["model"]
    ours = replay_two_processes(config, method, data, monkeypatch)
    assert ours.keys() == two.keys()
    for key, value in ours.items():
        if value.is_floating_point():
            torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", METHODS)
def test_losses_stay_in_float32_when_training_in_bf16(name):
    method = methods.get(name)
    model = method(method.Options(**method.tiny_options)).train()
    stage = model.stages(10)[0]
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sources = torch.rand(2, 3, SIZE, SIZE) if method.uses_anomaly_sources else None
    seen = []

    def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        assert not torch.is_autocast_enabled("cpu"), "backward runs outside autocast"
        seen.append(loss.dtype)

    outputs = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
    batch = TrainBatch(images, sources, torch.Generator().manual_seed(0), 0, precision="bf16")
    terms = model.training_step(batch, stage, update)
    assert outputs and all(dtype == torch.bfloat16 for dtype in outputs), "the networks run in bf16"
    assert seen and all(dtype == torch.float32 for dtype in seen)
    assert all(value.dtype == torch.float32 for value in terms.values())


@pytest.mark.parametrize("name", METHODS)
def test_the_engine_leaves_precision_to_the_method(name, tmp_path, monkeypatch):
    method = methods.get(name)
    original = method.training_step
    entered = []

    def checked(self, batch, stage, update):
        entered.append(torch.is_autocast_enabled("cpu"))
        return original(self, batch, stage, update)

    monkeypatch.setattr(method, "training_step", checked)
    data = make_category(tmp_path / "widget")
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), method=name, options=method.tiny_options,
                      max_steps=2, batch_size=2, image_size=SIZE, precision="bf16"))
    assert entered == [False, False]
