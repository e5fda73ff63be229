"""The method kit: methods depend on nothing above them, declare their length and presets, and register from
packages outside the source tree."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from draem import methods
from draem.cli import main
from draem.engine.config import TrainConfig, paper_steps, prepare
from draem.engine.demo import DemoConfig
from draem.errors import DraemError
from draem.methods.base import AnomalyModel, PaperLength

SOURCE = Path(__file__).parents[1] / "src" / "draem"
EXAMPLE = Path(__file__).parents[1] / "examples" / "pixel-gaussian"
ABOVE_THE_KIT = ("draem.engine", "draem.cli", "draem.api", "draem.serve", "draem.report", "draem.deploy")


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, written as `draem.x.y` (a `from draem import x` counts as draem.x)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_method_imports_the_engine_or_anything_above_it():
    files = sorted((SOURCE / "methods").rglob("*.py"))
    offending = [f"{path.relative_to(SOURCE)}: {name}" for path in files for name in imported_modules(path)
                 if name.startswith(ABOVE_THE_KIT)]
    assert len(files) > 20 and offending == []


def test_the_import_scan_sees_an_engine_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from draem import engine\nimport draem.engine.run\n")
    assert [n for n in imported_modules(module) if n.startswith(ABOVE_THE_KIT)] == ["draem.engine",
                                                                                   "draem.engine.run"]


@pytest.mark.parametrize("name", methods.available())
def test_every_method_declares_its_paper_length_and_a_full_and_a_demo_preset(name):
    method = methods.get(name)
    assert method.paper_length.unit in ("epochs", "steps") and method.paper_length.amount > 0
    for preset in method.presets.values():
        method.Options.from_dict(preset).validate()
    assert {"full", "demo"} <= set(method.presets)


def test_draem_keeps_its_700_epochs_and_dsr_counts_steps():
    config = TrainConfig(data=None, out="x")
    assert paper_steps(config, methods.get("draem"), 86) == 700 * 86
    assert paper_steps(config, methods.get("dsr"), 86) == methods.get("dsr").paper_length.amount == 120_000
    assert paper_steps(TrainConfig(data=None, out="x", epochs=3), methods.get("dsr"), 86) == 3 * 86
    assert PaperLength(5, "epochs").steps(10) == 50 and str(PaperLength(120_000, "steps")) == "120,000 steps"


def test_epochs_left_unset_take_the_paper_length_and_zero_epochs_are_refused(category, tmp_path):
    assert prepare(TrainConfig(data=str(category), out=str(tmp_path / "a")))[0].epochs is None
    with pytest.raises(DraemError, match="--epochs 0: must be at least 1"):
        prepare(TrainConfig(data=str(category), out=str(tmp_path / "b"), epochs=0))


def test_a_preset_sets_option_defaults_and_flags_win(category, tmp_path):
    config, _ = prepare(TrainConfig(data=str(category), out=str(tmp_path / "a"), preset="narrow"))
    assert (config.options["recon_width"], config.options["seg_width"]) == (32, 16)
    config, _ = prepare(TrainConfig(data=str(category), out=str(tmp_path / "b"), preset="narrow",
                                    options={"recon_width": 8}))
    assert (config.options["recon_width"], config.options["seg_width"]) == (8, 16)
    with pytest.raises(DraemError, match="--preset huge: method draem has the presets full, narrow, demo"):
        prepare(TrainConfig(data=str(category), out=str(tmp_path / "c"), preset="huge"))


def test_a_method_without_presets_is_refused_at_registration():
    class Incomplete(AnomalyModel):
        name, paper, headline, loss_terms = "incomplete", "p", "h", ()
        Options = methods.get("draem").Options
        paper_length = PaperLength(1)

    with pytest.raises(ValueError, match="does not declare presets"):
        methods.register(Incomplete)
    assert "incomplete" not in methods.available()


@pytest.mark.parametrize("name", ["riad", "ocrgan"])
def test_the_demo_trains_any_method_with_its_demo_preset(name, tmp_path):
    demo = DemoConfig(out=str(tmp_path), method=name, options={"width": 4})
    config, method = prepare(demo.train_config(tmp_path / "data", "wood"))
    expected = {**method.presets["demo"], "width": 4}
    assert method.name == name and config.preset == "demo" and config.max_steps == demo.steps
    assert all(config.options[key] == value for key, value in expected.items())
    assert Path(config.out) == tmp_path / "runs" / name / "wood"


def test_demo_refuses_an_unknown_method_before_any_work(tmp_path, capsys):
    assert main(["demo", "--method", "nope", "--out", str(tmp_path / "d")]) == 2
    assert "--method nope: unknown method" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_ablate_help_lists_the_rows_of_the_method_asked_for(capsys):
    def ablate_help(method: str) -> str:
        with pytest.raises(SystemExit):
            main(["ablate", "--method", method, "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert "ocrgan's: high, low" in ablate_help("ocrgan") and "draem's: disc, recon-ae" in ablate_help("draem")


def installed_example(tmp_path: Path) -> dict[str, str]:
    """An environment where the example package is installed as pip would: its module on the path and a
    dist-info folder declaring its entry point."""
    info = tmp_path / "site" / "draem_pixel_gaussian-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: draem-pixel-gaussian\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[draem.methods]\npixel-gaussian = draem_pixel_gaussian\n")
    path = os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def draem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "draem", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_method_from_a_package_outside_the_source_tree_registers_trains_and_predicts(category, tmp_path):
    env = installed_example(tmp_path)
    listed = draem(env, "methods")
    assert listed.returncode == 0 and "pixel-gaussian" in listed.stdout
    out = tmp_path / "run"
    trained = draem(env, "train", "--method", "pixel-gaussian", "--data", str(category), "--out", str(out),
                    "--image-size", "32", "--batch-size", "2", "--grid", "8", "--epochs", "2")
    assert trained.returncode == 0, trained.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["options"] == {"grid": 8, "min_variance": 1e-4} and config["total_steps"] == 4
    tested = draem(env, "test", "--run", str(out), "--data", str(category))
    assert tested.returncode == 0, tested.stderr
    metrics = json.loads((out / "metrics.json").read_text())["overall"]
    assert metrics["image_auroc"] > 0.5  # the category's defects are bright squares on a dim surface
    assert draem(dict(os.environ), "methods").stdout.count("pixel-gaussian") == 0
