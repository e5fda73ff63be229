"""Results tables in docs/results/ are rendered from the JSON their benchmarks wrote, and cannot disagree."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import results
import tables


def test_every_table_in_the_docs_agrees_with_its_json():
    assert tables.main(["--check"]) == 0


def test_a_table_is_rendered_from_its_json_and_a_hand_edit_is_caught(tmp_path, capsys):
    results.write_study("speed", "Speed", [("clients", "clients"), ("rate", "images/s")],
                        [{"clients": 1, "rate": 41.234567}, {"clients": 4, "rate": None}], folder=tmp_path)
    record = json.loads((tmp_path / "speed.json").read_text())
    assert record["commit"] and "cores" in record["cpu"] and record["rows"][0]["rate"] == 41.234567
    page = tmp_path / "speed.md"
    page.write_text("# Speed\n\n<!-- table: speed.json -->\nold\n<!-- /table -->\n\nprose\n")
    assert tables.main(["--check"], folder=tmp_path) == 1 and "speed.md: speed.json" in capsys.readouterr().out
    assert tables.main([], folder=tmp_path) == 0
    text = page.read_text()
    assert "| clients | images/s |" in text and "| 1 | 41.23 |" in text and "| 4 | – |" in text
    assert text.endswith("<!-- /table -->\n\nprose\n") and tables.main(["--check"], folder=tmp_path) == 0
    page.write_text(text.replace("41.23", "45.00"))
    assert tables.main(["--check"], folder=tmp_path) == 1
