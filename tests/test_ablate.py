import csv
import dataclasses
import re

import pytest
from conftest import SHARED, make_category

from draem import methods
from draem.cli import main
from draem.engine.ablate import check_settings, row_options, select_rows
from draem.errors import DraemError
from draem.methods.draem import DraemOptions
from draem.methods.draem.ablation import ABLATION_ROWS, COLUMNS

PAPER = SHARED / "docs" / "paper-review.txt"
TINY = ["--image-size", "32", "--batch-size", "2", "--max-steps", "2", "--set", "recon_width=4",
        "--set", "seg-width=4", "--device", "cpu"]


def test_draem_carries_its_ablation_rows():
    assert methods.get("draem").ablation_rows == ABLATION_ROWS
    assert len({row.name for row in ABLATION_ROWS}) == len(ABLATION_ROWS)


def test_every_row_builds_its_model_or_says_why_not():
    for row in ABLATION_ROWS:
        if row.method is None:
            assert "not reproducible" in row.note
            continue
        method = methods.get(row.method)
        options = method.Options.from_dict({**method.tiny_options, **row.options})
        options.validate()
        assert isinstance(method(options), method)


def paper_label(text: str) -> str:
    """'DRÆM _{color}' -> 'DRÆM_color', 'Božič <i>et al.</i> [6]' -> 'Božič et al.'."""
    return re.sub(r" _\{(.*)\}", r"_\1", re.sub(r"<i>|</i>| \[\d+\]", "", text))


def paper_table() -> dict[str, list[str]]:
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Method\tArchitecture"))
    table = {}
    for line in lines[start + 2:]:
        if not line:
            return table
        label, *cells = line.split("\t")
        table[paper_label(label)] = cells
    return table


@pytest.mark.skipif(not PAPER.is_file(), reason=f"{PAPER} not present")
def test_rows_are_table_3_read_by_counting_tabs():
    table = paper_table()
    assert [row.label for row in ABLATION_ROWS] == list(table)
    for row in ABLATION_ROWS:
        *marks, det, loc = table[row.label]
        assert len(marks) == len(COLUMNS), row.label
        assert row.columns == ", ".join(name for name, mark in zip(COLUMNS, marks, strict=True) if mark == "✓")
        auroc, ap = loc.split(" / ")
        assert (row.image_auroc, row.pixel_auroc) == (float(det), float(auroc))
        assert row.pixel_ap == (None if ap == "--.-" else float(ap))


def test_unambiguous_rows_have_the_options_their_checkmarks_say():
    rows = {row.name: row for row in ABLATION_ROWS}
    paper = DraemOptions()

    def options(name: str) -> DraemOptions:
        return DraemOptions.from_dict(rows[name].options)

    assert options("draem") == paper
    assert options("disc") == dataclasses.replace(paper, reconstruction=False)
    assert options("recon-ae") == dataclasses.replace(paper, discrimination=False)
    assert options("recon-ae-msgms") == dataclasses.replace(paper, discrimination=False, recon_loss="msgms")
    assert options("draem-no-aug") == dataclasses.replace(paper, source_augmentation=False, rotation_prob=0.0,
                                                          beta="fixed")
    assert options("draem-img-aug") == dataclasses.replace(paper, rotation_prob=0.0, beta="fixed")
    assert options("draem-color").source == "colour" and rows["draem-color"].anomaly_source == "none"
    assert rows["draem-imagenet"].anomaly_source == "natural" and rows["draem"].anomaly_source == "textures"
    assert (rows["riad"].method, rows["riad"].anomaly_source) == ("riad", "none")
    assert rows["bozic"].method is None


def test_set_applies_to_rows_whose_method_has_the_option():
    disc, riad = select_rows("draem", ["riad", "disc"])
    assert (disc.name, riad.name) == ("disc", "riad")
    assert row_options(disc, {"recon_width": "4", "width": "8"})["recon_width"] == 4
    assert row_options(riad, {"recon_width": "4", "width": "8"}) == {"width": 8}
    with pytest.raises(DraemError, match="--set rotation_prob: row disc sets it itself"):
        check_settings([disc, riad], {"rotation_prob": "0"})
    with pytest.raises(DraemError, match="--set widht: no option"):
        check_settings([disc, riad], {"widht": "4"})
    with pytest.raises(DraemError, match="--set width=four: expected int"):
        row_options(riad, {"width": "four"})


def test_ablate_trains_tests_writes_the_table_and_does_not_retrain(tmp_path, capsys):
    data = make_category(tmp_path / "widget", size=32)
    out = tmp_path / "ablation"
    argv = ["ablate", "--data", str(data), "--out", str(out), "--rows", "recon-ae", "disc", "draem-imagenet", *TINY]
    assert main(argv) == 0
    with (out / "ablation.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["row"] for row in rows] == ["disc", "recon-ae", "draem-imagenet"]
    for row in rows[:2]:
        assert row["steps"] == "2" and row["status"] == ""
        for name in ("image_auroc", "pixel_auroc", "pixel_ap"):
            assert 0 <= float(row[name]) <= 100
            assert 40 < float(row[f"paper_{name}"]) < 100
    assert rows[2]["status"] == "not run: needs --natural-images" and rows[2]["image_auroc"] == ""
    assert not (out / "draem-imagenet").exists()
    text = (out / "ablation.md").read_text()
    assert "2 steps" in text and "fp32" in text and "no validation split" in text
    assert "| Disc. (disc) | draem |" in text and "| Recon.-AE (recon-ae) | draem |" in text
    assert "| not run: needs --natural-images |" in text
    assert "| Recon.-AE (recon-ae)" in capsys.readouterr().out

    models = {name: out / name / "model.pt" for name in ("disc", "recon-ae")}
    written = {name: path.stat().st_mtime_ns for name, path in models.items()}
    assert main(argv) == 0
    assert {name: path.stat().st_mtime_ns for name, path in models.items()} == written

    models["recon-ae"].unlink()  # interrupted after its last checkpoint: resumes there, up to the new budget
    assert main([*argv, "--max-steps", "3"]) == 0
    with (out / "ablation.csv").open(newline="") as table:
        assert [row["steps"] for row in csv.DictReader(table)] == ["2", "3", ""]
    assert models["disc"].stat().st_mtime_ns == written["disc"] and models["recon-ae"].exists()


def test_unknown_row_is_a_one_line_error_naming_the_rows(tmp_path, capsys):
    code = main(["ablate", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--rows", "disc", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "--rows nope: unknown row" in err[0] and "recon-ae-msgms" in err[0] and "draem-beta" in err[0]
