"""Every experiment file validates; the paper-table files cover their tables' rows; the inputs a run reads
(prompt sets, learned schedules) are checked before any sampling, naming the command that makes them."""

from pathlib import Path

import pytest
import yaml

import methods
from harness import experiment, report, runner
from harness.reference_results import TABLES
from harness.store import Store

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_experiment_file_validates(path):
    from harness import sweep
    from methods.diffsparse import train_file

    data = yaml.safe_load(path.read_text())
    if "schedules" in data:  # a training file (dsbench train diffsparse): the schedules experiments read
        spec, todo = train_file.load(path)
        assert spec.name == path.stem and todo
        return
    if "experiment" in data:  # a sweep file: a base experiment and its points
        spec = sweep.load(path)
        exps = [spec.experiment_for(point) for point in spec.points()] if spec.sweep.grid else []
        assert spec.sweep.name == path.stem
    else:
        exps = [experiment.load(path)]
        assert exps[0].name == path.stem
    assert all(exp.method_entries() for exp in exps)


@pytest.mark.parametrize("layout", sorted(TABLES))
def test_each_paper_table_has_a_file_whose_entries_measure_its_rows(layout):
    spec = TABLES[layout]
    exp = experiment.load(ROOT / "experiments" / f"{spec.experiment}.yaml")
    assert spec.model in exp.models
    runs = [{"method": e.name, "params": e.params_for(spec.model), "tuned": {},
             "budget_macs_ratio": runner._budget_ratio(exp, e)} for e in exp.method_entries()]
    for row in spec.rows:
        for match in (row.match, *row.column_match.values()):
            if match["method"] in methods.available():  # DiCache (Table 1) is not implemented
                assert any(report.matches(run, match) for run in runs), (layout, row.label, match)


def test_paper_table_files_run_duca_at_the_ratio_whose_macs_are_the_papers():
    """DuCa's public default R counts fewer MACs than the paper's rows; the calibration tunes R to the published
    MACs (test_accounting pins them) and the table files must run that R, not the default."""
    from harness.accounting import CALIBRATION

    tuned = {model: params for model, method, params, *_ in CALIBRATION if method == "duca"}
    checked = 0
    for spec in TABLES.values():
        if spec.model in tuned and any(row.match.get("method") == "duca" for row in spec.rows):
            exp = experiment.load(ROOT / "experiments" / f"{spec.experiment}.yaml")
            entries = [e for e in exp.method_entries() if e.name == "duca"]
            assert entries and all(e.params_for(spec.model) == tuned[spec.model] for e in entries), spec.id
            checked += 1
    assert checked == 2  # Tables 1 (PixArt-α) and 2 (DiT-XL/2)


def test_missing_prompt_set_and_schedule_fail_check_inputs_naming_field_and_command(tmp_path, monkeypatch):
    exp = experiment.load(ROOT / "experiments" / "table1_pixart.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"field 'eval.prompts': data/prompts/coco2017_captions_30k.txt does not"):
        experiment.check_inputs(exp)
    (tmp_path / "data" / "prompts").mkdir(parents=True)
    (tmp_path / "data" / "prompts" / "coco2017_captions_30k.txt").write_text("a cat\n")
    with pytest.raises(ValueError) as err:
        experiment.check_inputs(exp)
    assert "field 'methods[7].params.schedule' (model pixart-alpha-256)" in str(err.value)
    assert ("python -m methods.diffsparse.train --model pixart-alpha-256 --out schedules/pixart-alpha-256/r43"
            in str(err.value))


def test_runner_checks_inputs_before_any_sampling(tmp_path):
    exp = experiment.parse({"name": "missing", "models": ["mnist-dit"], "steps": 4, "eval": {"size": 2},
                            "methods": [{"name": "full"},
                                        {"name": "diffsparse", "params": {"schedule": str(tmp_path / "s.json")}}]},
                           "missing.yaml")
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(ValueError, match="methods.diffsparse.train --model mnist-dit"):
        runner.run_experiment(exp, store, artifacts=tmp_path / "a", progress=False)
    assert len(store) == 0 and not (tmp_path / "a").exists()


def test_quickstart_inputs_are_in_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)
    experiment.check_inputs(experiment.load(ROOT / "experiments" / "quickstart.yaml"))


def test_entries_may_carry_their_own_budget():
    exp = experiment.load(ROOT / "experiments" / "table3_wan.yaml")
    duca = [e for e in exp.method_entries() if e.name == "duca"]
    assert [runner._budget_ratio(exp, e) for e in duca] == [0.46, 0.41]
    assert len({runner.run_id(exp, "wan2.1-1.3b", e, 0) for e in duca}) == 2
    with pytest.raises(ValueError, match=r"methods\[0\].params.*duca.ratio is tuned.*0.41"):
        experiment.parse({"name": "x", "models": ["mnist-dit"],
                          "methods": [{"name": "duca", "params": {"ratio": 0.3}, "budget": {"macs_ratio": 0.41}}]})
