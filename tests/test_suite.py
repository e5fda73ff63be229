import json
import os
import subprocess

import pytest
from conftest import make_category
from test_distributed import torchrun

from draem.cli import main
from draem.engine.suite import markdown, summary_table

TINY = ["--image-size", "32", "--recon-width", "4", "--seg-width", "4", "--batch-size", "2", "--max-steps", "1"]


def test_every_category_trains_and_tests_into_the_papers_table(tmp_path, capsys):
    for name in ("bottle", "cable"):
        make_category(tmp_path / "data" / name, seed=len(name))
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(tmp_path / "data"), "--category", "all", "--out", str(runs), *TINY]) == 0
    assert (runs / "bottle" / "model.pt").exists() and (runs / "cable" / "model.pt").exists()
    assert main(["test", "--run", str(runs), "--data", str(tmp_path / "data"), "--category", "all"]) == 0
    table = (runs / "benchmark.md").read_text().splitlines()
    assert table[0] == "| Category | Image AUROC | Pixel AUROC | Pixel AP | AUPRO |"
    assert [row.split("|")[1].strip() for row in table[2:5]] == ["bottle", "cable", "Mean"]
    assert "no held-out calibration split" in table[-1] and "fp32" in table[-1]
    assert json.loads((runs / "bottle" / "metrics.json").read_text())["precision"] == "fp32"
    assert json.loads((runs / "bottle" / "config.json").read_text())["train"]["validation_fraction"] == 0.0
    csv_rows = (runs / "benchmark.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[-1].startswith("Mean,")


def test_summary_table_means_each_column():
    results = {"a": {"overall": {"image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_ap": 0.5, "aupro": 0.7}},
               "b": {"overall": {"image_auroc": 1.0, "pixel_auroc": 0.9, "pixel_ap": None, "aupro": 0.9}}}
    rows = summary_table(results)
    assert rows[-1] == ["Mean", "95.0", "85.0", "50.0", "80.0"]
    assert "| b | 100.0 | 90.0 | n/a | 90.0 |" in markdown(rows)


@pytest.mark.slow
def test_parallel_categories_give_each_process_its_own_category(tmp_path):
    for name in ("bottle", "cable"):
        make_category(tmp_path / "data" / name, seed=len(name))
    result = subprocess.run(torchrun(2, "-m", "draem", "train", "--data", str(tmp_path / "data"), "--category",
                                     "all", "--parallel-categories", "--out", str(tmp_path / "runs"), *TINY),
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "bottle" / "model.pt").exists()
    assert (tmp_path / "runs" / "cable" / "model.pt").exists()
