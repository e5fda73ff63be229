"""Regenerate the tables in docs/results/*.md from the JSON their benchmarks wrote, or check that they agree.

A table is the text between `<!-- table: NAME.json -->` and `<!-- /table -->`; NAME.json sits beside the page.

    python benchmarks/tables.py            # rewrite every table from its JSON
    python benchmarks/tables.py --check    # exit 1 naming each table that differs from its JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parents[1] / "docs" / "results"
TABLE = re.compile(r"(<!-- table: (?P<name>[\w.-]+\.json) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def cell(value: Any) -> str:
    """A value as the table shows it: numbers with up to four significant decimals, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(record: dict[str, Any]) -> str:
    """The markdown of one study: its provenance line, then the table."""
    keys = [key for key, _ in record["columns"]]
    lines = [f"Measured on commit `{record['commit']}`, {record['cpu']}: `{record['command']}`",
             "", "| " + " | ".join(title for _, title in record["columns"]) + " |",
             "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in keys) + " |" for row in record["rows"]]
    if record.get("notes"):
        lines += ["", record["notes"]]
    return "\n".join(lines) + "\n"


def regenerate(page: Path) -> tuple[str, list[str]]:
    """The page with every table rendered from its JSON, and the names of the tables that changed."""
    changed = []

    def replace(match: re.Match) -> str:
        source = page.parent / match["name"]
        if not source.is_file():
            raise SystemExit(f"{page}: table {match['name']} has no JSON beside the page")
        body = render(json.loads(source.read_text()))
        if body != match["body"]:
            changed.append(match["name"])
        return match[1] + body + match[4]

    return TABLE.sub(replace, page.read_text()), changed


def main(argv: list[str] | None = None, folder: Path = RESULTS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args(argv)
    stale = []
    for page in sorted(folder.glob("*.md")):
        text, changed = regenerate(page)
        stale += [f"{page.name}: {name}" for name in changed]
        if changed and not args.check:
            page.write_text(text)
    for item in stale:
        print(("differs from its JSON: " if args.check else "rewritten: ") + item)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
