"""Every experiment file validates; the paper-table files cover their tables' rows; the inputs a run reads
(prompt sets, learned schedules) are checked before any sampling, naming the command that makes them."""

from pathlib import Path

import pytest
import yaml

from dsbench import experiment, methods, report, runner
from dsbench.reference_results import TABLES
from dsbench.store import Store

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_experiment_file_validates(path):
    from dsbench import sweep
    from dsbench.training import train_file

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


def _entry_runs(exp, model: str) -> list[dict]:
    return [
        {
            "method": e.name,
            "params": e.params_for(model),
            "tuned": {},
            "budget_macs_ratio": budget.macs_ratio if (budget := exp.budget_for(e)) is not None else None,
        }
        for e in exp.method_entries()
    ]


@pytest.mark.parametrize("layout", sorted(t for t, spec in TABLES.items() if spec.experiment))
def test_each_paper_table_has_a_file_whose_entries_measure_its_rows(layout):
    spec = TABLES[layout]
    exp = experiment.load(ROOT / "experiments" / f"{spec.experiment}.yaml")
    assert spec.model in exp.models
    runs = _entry_runs(exp, spec.model)
    for row in spec.rows:
        for match in (row.match, *row.column_match.values()):
            if match["method"] in methods.available():  # DiCache (Table 1) is not implemented
                assert any(report.matches(run, match) for run in runs), (layout, row.label, match)


@pytest.mark.parametrize("layout", sorted(t for t, spec in TABLES.items() if spec.analogue))
def test_each_embedded_analogue_file_measures_every_row_it_does_not_explain_away(layout):
    spec = TABLES[layout]
    analogue = spec.analogue
    exp = experiment.load(ROOT / "experiments" / f"{analogue.experiment}.yaml")
    assert exp.models == [analogue.model]
    runs = _entry_runs(exp, analogue.model)
    for row in spec.rows:
        if row.label in analogue.absent:
            continue
        for column in analogue.columns:
            match = report.paper_match(row, column, analogue)
            assert any(report.matches(run, match) for run in runs), (layout, row.label, match)
    assert not any(spec.no_analogue for spec in TABLES.values() if spec.analogue)


def test_paper_table_files_run_duca_at_the_ratio_whose_macs_are_the_papers():
    """DuCa's public default R counts fewer MACs than the paper's rows; the calibration tunes R to the published
    MACs (test_accounting pins them) and the table files must run that R, not the default."""
    from dsbench.macs import CALIBRATION

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
    assert "python -m dsbench.training.diffsparse --model pixart-alpha-256 --out schedules/pixart-alpha-256/r43" in str(
        err.value
    )


def test_runner_checks_inputs_before_any_sampling(tmp_path):
    exp = experiment.parse(
        {
            "name": "missing",
            "models": ["mnist-dit"],
            "steps": 4,
            "eval": {"size": 2},
            "methods": [{"name": "full"}, {"name": "diffsparse", "params": {"schedule": str(tmp_path / "s.json")}}],
        },
        "missing.yaml",
    )
    store = Store(tmp_path / "db.sqlite")
    with pytest.raises(ValueError, match="dsbench.training.diffsparse --model mnist-dit"):
        runner.run_experiment(exp, store, artifacts=tmp_path / "a", progress=False)
    assert len(store) == 0 and not (tmp_path / "a").exists()


def test_quickstart_inputs_are_in_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)
    experiment.check_inputs(experiment.load(ROOT / "experiments" / "quickstart.yaml"))


def test_entries_may_carry_their_own_budget():
    exp = experiment.load(ROOT / "experiments" / "table3_wan.yaml")
    duca = [e for e in exp.method_entries() if e.name == "duca"]
    assert [exp.budget_for(e).macs_ratio for e in duca] == [0.46, 0.41]
    assert len({runner.run_id(exp, "wan2.1-1.3b", e, 0) for e in duca}) == 2
    with pytest.raises(ValueError, match=r"methods\[0\].params.*duca.ratio is tuned.*0.41"):
        experiment.parse(
            {
                "name": "x",
                "models": ["mnist-dit"],
                "methods": [{"name": "duca", "params": {"ratio": 0.3}, "budget": {"macs_ratio": 0.41}}],
            }
        )


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"models": ["shapes-pixart"], "guidance_channels": 3},
            r"^x.yaml: field 'guidance_channels': model shapes-pixart is not a DiT model; only DiT models take it",
        ),
        ({"models": ["mnist-dit", "wan2.1-1.3b"], "guidance_channels": 3}, r"model wan2.1-1.3b is not a DiT model"),
        (
            {"models": ["mnist-dit"], "guidance_channels": 5},
            r"field 'guidance_channels': Input should be less than or equal to 4 "
            r".*allowed: DiT models only: .*N in \[1, 4\].* or null",
        ),
        ({"models": ["mnist-dit"], "guidance_channels": 0}, r"field 'guidance_channels': Input should be greater"),
    ],
)
def test_guidance_channels_is_dit_only_and_in_range(data, message):
    with pytest.raises(ValueError, match=message) as err:
        experiment.parse({**data, "methods": [{"name": "full"}]}, "x.yaml", default_name="x")
    assert "\n" not in str(err.value)


def test_guidance_channels_makes_new_runs_and_leaves_other_identities_as_they_were(monkeypatch):
    """Set, the field is part of the identity; unset, the identity is the one computed before the field existed
    (pinned here for a fixed code version)."""
    monkeypatch.setattr(runner, "code_version", lambda: "pinned")  # as $DSBENCH_CODE_VERSION=pinned
    data = {"name": "x", "models": ["mnist-dit"], "methods": [{"name": "toca"}]}
    plain = experiment.parse(data, "x.yaml")
    three = experiment.parse({**data, "guidance_channels": 3}, "x.yaml")
    assert plain.guidance_channels is None and three.guidance_channels == 3
    assert runner.run_id(plain, "mnist-dit", plain.methods[0], 0) == "aa772e683bc1a4ebbd3b644c"
    assert runner.run_id(three, "mnist-dit", three.methods[0], 0) != "aa772e683bc1a4ebbd3b644c"
    assert experiment.load(ROOT / "experiments" / "table2_dit.yaml").guidance_channels == 3


def test_the_runner_passes_guidance_channels_to_the_sampler_only_when_set():
    from types import SimpleNamespace

    calls = []
    bundle = SimpleNamespace(
        pipeline=SimpleNamespace(set_progress_bar_config=lambda **kw: None),
        sample=lambda conditions, seed, **kw: calls.append(kw),
    )
    for channels in (3, None):
        ctx = runner.ModelContext(
            bundle=bundle,
            sampler="ddim",
            steps=4,
            guidance=1.5,
            guidance_given=False,
            guidance_channels=channels,
            conditions=[1],
            references=None,
            progress=False,
        )
        ctx.sample([1], 0)
    assert calls == [{"steps": 4, "start": 0, "guidance_channels": 3}, {"steps": 4, "start": 0}]
