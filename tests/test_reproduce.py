"""``dsbench reproduce``: what it selects, plans and writes (the analogue runs themselves are results/paper/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbench import reproduce
from dsbench.cli import main as cli
from dsbench.reference_results import TABLES

ROOT = Path(__file__).resolve().parents[1]


def test_only_selects_tables_in_the_papers_order_and_names_the_allowed_ones():
    assert reproduce.selected(None) == [*TABLES, "others"]
    assert reproduce.selected("search, table5,table1") == ["table1", "table5", "search"]
    with pytest.raises(
        ValueError, match=r"--only: unknown table 'table11'; allowed: table1, table2, .*, search, others"
    ):
        reproduce.selected("table1,table11")


def test_every_schedule_the_analogues_read_is_there_or_has_a_training_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    needs = reproduce.plan(reproduce.selected(None))
    assert set(needs["experiments"]) == {
        "paper_table1",
        "paper_table2",
        "paper_table4",
        "paper_ablations",
        "paper_search",
        "paper_sparsedit",
    }
    outs = [out for outs in needs["to_train"].values() for out in outs]
    expected = reproduce._schedules(needs["experiments"]["paper_table1"])
    assert "results/paper/schedules/shapes-pixart/r43/schedule.json" in expected
    assert all(str(Path(s).parent) in outs or s in needs["present"] for s in expected)
    assert not needs["compare"]  # the search comparison's schedules are committed


def test_reproduce_outside_the_repository_root_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["reproduce", "--only", "table3"]) == 2
    assert "run dsbench reproduce from the repository root" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_tables_without_analogue_are_written_with_published_numbers_and_the_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli(["reproduce", "--only", "table3,table9", "--out", str(tmp_path / "paper")]) == 0
    written = {p.name for p in (tmp_path / "paper").iterdir()}
    assert {"table3.md", "table3.csv", "table3.tex", "table9.csv", "claims.md", "README.md"} <= written
    assert "43.866" in (tmp_path / "paper" / "table3.csv").read_text()
    readme = (tmp_path / "paper" / "README.md").read_text()
    assert "published numbers only: the embedded model zoo has no video model yet" in readme
    assert "dsbench reproduce --only table3,table9" in readme
