"""The published benchmark tables match the committed result files they are generated from."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import render

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "benchmarks" / "results"


PAGES = [*sorted((ROOT / "docs" / "benchmarks").glob("*.md")), ROOT / "docs" / "scaling.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_with_committed_results_is_what_they_say(page: Path) -> None:
    """A table whose runs are all in docs/benchmarks/results/ must be exactly what `bench.report` renders from
    them (a hand-edited number, or a result re-run without regenerating the page, fails here)."""
    doc = page.read_text()
    text, _missing = render(doc, [RESULTS])
    assert text == doc, f"{page.name} differs from `python -m bench.report {page.relative_to(ROOT)}`"


def test_transfer_tables_are_the_committed_study_output() -> None:
    """transfer.md pastes the tables `python -m bench.transfer` wrote; each committed one appears verbatim."""
    page = (ROOT / "docs" / "benchmarks" / "transfer.md").read_text()
    written = sorted((RESULTS / "transfer").rglob("*.md"))
    assert written, "no committed bench.transfer tables"
    for table in written:
        assert table.read_text().strip() in page, f"{table.name} is not what transfer.md shows"
