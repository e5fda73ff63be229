"""A study's measurements as JSON beside its table: what was measured, on which commit and CPU, by which command.

Benchmarks call `write_study`; `benchmarks/tables.py` renders the tables in docs/results/ from these files.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parents[1] / "docs" / "results"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def commit() -> str:
    """The short hash of the checkout's HEAD, marked '+changes' when the tree differs from it."""
    root = Path(__file__).parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit not recorded"
    return head + ("+changes" if dirty else "")


def machine() -> str:
    """The CPU model, its core count and the vector and matrix instruction sets that matter here."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in FLAGS if flag in flags]
    return f"{model}, {os.cpu_count()} cores, " + (" / ".join(present) if present else "no AVX2")


def write_study(name: str, title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]],
                notes: str = "", folder: Path = RESULTS) -> Path:
    """Write docs/results/<name>.json: the rows (one dict each, keyed by the columns' keys) and their provenance."""
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"study": name, "title": title, "commit": commit(), "cpu": machine(),
              "command": " ".join(["python", *sys.argv]), "notes": notes,
              "columns": [list(column) for column in columns], "rows": rows}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
