"""The experiment runner on the embedded mnist-dit (few steps, 4 samples): validation, rows, resume, force,
budget bisection, W&B mirror."""

import os

import numpy as np
import pytest
from conftest import run_quietly

from dsbench import experiment, runner
from dsbench.cli import main as cli_main
from dsbench.store import Store
from dsbench.tracking import Tracker

os.environ.setdefault("WANDB_MODE", "offline")
BASE = {
    "models": ["mnist-dit"],
    "steps": 6,
    "eval": {"size": 4},
    "metrics": ["lpips", "psnr", "ssim", "alignment"],
    "latency": {"repeats": 1, "warmup": 0},
}


def _exp(name, methods, **extra):
    return experiment.parse({"name": name, **BASE, "methods": methods, **extra}, f"{name}.yaml")


# -- validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("models: [mnist-dt]\nmethods: all\n", ["bad.yaml", "models[0]", "mnist-dt", "allowed:", "mnist-dit"]),
        ("models: [mnist-dit]\nmethods: [{name: toka}]\n", ["bad.yaml", "methods[0].name", "allowed:", "toca"]),
        (
            "models: [mnist-dit]\nmethods: [{name: toca, params: {ratio: 2}}]\n",
            ["bad.yaml", "methods[0].params", "ratio"],
        ),
        ("models: [mnist-dit]\nmethods: all\nmetrics: [fd]\n", ["bad.yaml", "metrics[0]", "allowed:", "fid"]),
        ("models: [mnist-dit]\nmethods: all\nstepz: 3\n", ["bad.yaml", "stepz", "allowed fields:", "steps"]),
        ("models: [mnist-dit]\nmethods: all\neval: {set: coco}\n", ["bad.yaml", "eval.set", "'default' or 'prompts'"]),
        ("models: [mnist-dit]\nmethods: all\nbudget: {macs_ratio: 1.5}\n", ["bad.yaml", "budget.macs_ratio"]),
        (
            "models: [mnist-dit]\nmethods: [{name: toca, models: {shapes-pixart: {ratio: 0.1}}}]\n",
            ["bad.yaml", "methods[0].models", "shapes-pixart", "allowed: mnist-dit"],
        ),
        (
            "models: [mnist-dit]\nbudget: {macs_ratio: 0.5}\nmethods: [{name: fora, params: {interval: 2}}]\n",
            ["bad.yaml", "methods[0].params", "interval", "tuned"],
        ),
        ("models: [mnist-dit]\nmethods: al\n", ["bad.yaml", "'methods'", "`all`"]),
        (
            "models: [mnist-dit]\nmethods: [{name: fora}, {name: toca}, {name: fora}]\n",
            ["bad.yaml", "methods[2]", "repeats methods[0]"],
        ),
    ],
)
def test_validation_errors_name_file_field_and_allowed_values(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        experiment.load(path)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_cli_run_reports_invalid_file_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [mnist-dit]\nmethods: [{name: toca, parms: {}}]\n")
    assert cli_main(["run", str(path), "--store", str(tmp_path / "r.db")]) == 2
    assert "unknown field 'methods[0].parms'; allowed fields: name, params, models" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_run_label_encodes_config():
    assert (
        runner.run_label("toca", {"interval": 3, "ratio": 0.3, "bonus": 0.4}, {"bonus": 0.4})
        == "toca_N3_R0.30_bonus0.40"
    )
    assert runner.run_label("full", {}, {}, seed=2) == "full_s2"
    # schedules all named schedule.json are told apart by their folder; other files by their name
    assert (
        runner.run_label("diffsparse", {}, {"schedule": "results/ablations/r43/schedule.json"})
        == "diffsparse_schedule-r43"
    )
    assert (
        runner.run_label("sparsedit", {}, {"weights": "results/sparsedit/tuned.safetensors"})
        == "sparsedit_weights-tuned.safetensors"
    )


def test_a_retrained_schedule_at_the_same_path_is_a_new_run(tmp_path):
    """The identity holds the content of the files params name: rows of an older schedule are not reused."""
    schedule = tmp_path / "schedule.json"
    schedule.write_text('{"version": 1}')
    exp = experiment.parse(
        {
            "name": "e",
            "models": ["shapes-pixart"],
            "methods": [{"name": "diffsparse", "params": {"schedule": str(schedule)}}],
        },
        "e.yaml",
    )
    entry = exp.method_entries()[0]
    before = runner.run_id(exp, "shapes-pixart", entry, 0)
    assert runner.run_id(exp, "shapes-pixart", entry, 0) == before  # stable while the file is unchanged
    schedule.write_text('{"version": 2, "retrained": true}')
    assert runner.run_id(exp, "shapes-pixart", entry, 0) != before


# -- runs, resume, force, W&B --------------------------------------------------------------------------------
def test_run_rerun_force_and_wandb(tmp_path, teachers, monkeypatch):
    exp = _exp("basic", [{"name": "full"}, {"name": "fora", "params": {"interval": 2}}])
    store = Store(tmp_path / "r.db")
    out = run_quietly(exp, store, tmp_path, teachers, tracker=Tracker(dir=tmp_path / "wb"))
    assert len(out.stored) == 2 and len(store) == 2
    frame = store.frame("basic").set_index("method")
    full, fora = frame.loc["full"], frame.loc["fora"]
    # full through the executor is the plain pipeline: identical to the teacher
    assert full.lpips_alex == 0 and full.psnr == float("inf") and full.macs_ratio == 1
    assert 0 < fora.macs < full.macs and fora.macs_full == full.macs and 0.4 < fora.macs_ratio < 0.7
    assert fora.label == "fora_N2" and fora.full_steps == [0, 1, 3, 5]  # DiT counts down: s = 5 - i even
    for run in (full, fora):
        assert run.latency_s > 0 and run.latency_full_s > 0 and run.speedup > 0 and run.peak_memory_mb >= 0
        assert 0 <= run.class_accuracy <= 1 and run.ssim <= 1 and run.n_samples == 4 and run.steps == 6
        kept = np.load(os.path.join(run.artifacts, "decisions.npy"))
        assert kept.shape == (6, 12)  # 6 steps × (6 blocks × sa, mlp)
        assert os.path.isfile(os.path.join(run.artifacts, "samples.png"))
        # per-image values behind every per-image metric, and the timed repeats behind the speedup
        for metric in ("lpips_alex", "lpips_vgg", "psnr", "ssim", "class_accuracy"):
            values = run.per_sample[metric]["values"]
            assert len(values) == 4 and np.mean(values) == pytest.approx(run[metric])
        assert len(run.latency_seconds) == len(run.latency_full_seconds) == 1
        assert run.machine and run.report_metrics[0] == "lpips_alex"
    assert np.load(os.path.join(fora.artifacts, "decisions.npy")).sum(axis=1).tolist() == [12, 12, 0, 12, 0, 12]
    assert 0 < fora.lpips_alex < 1
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*")), "no offline W&B run directory"

    from dsbench import quickstart  # the quickstart's outputs, from this store

    quickstart.write_outputs(store.frame("basic"), tmp_path / "qs")
    assert "fora_N2" in (tmp_path / "qs" / "leaderboard.md").read_text()
    assert "fora_N2" in (tmp_path / "qs" / "leaderboard.csv").read_text()
    assert (tmp_path / "qs" / "grids" / "mnist-dit.png").is_file()

    again = run_quietly(exp, store, tmp_path, teachers)  # resume: everything is stored already
    assert again.stored == [] and len(again.resumed) == 2 and len(store) == 2

    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)  # wandb.init rebinds wandb.log to run.log
    before = store.get(fora.run_id)["created_at"]
    with pytest.warns(UserWarning, match="W&B mirror failed.*W&B is down"):
        forced = run_quietly(exp, store, tmp_path, teachers, force=True, tracker=Tracker(dir=tmp_path / "wb"))
    assert len(forced.stored) == 2 and len(store) == 2  # replaced, not duplicated, despite W&B failing
    assert store.get(fora.run_id)["created_at"] > before


def test_interrupted_run_resumes_without_duplicates(tmp_path, teachers, monkeypatch):
    from dsbench import metrics

    exp = _exp("interrupt", [{"name": "full"}, {"name": "fora"}, {"name": "steps", "params": {"fraction": 0.5}}])
    store = Store(tmp_path / "r.db")
    original, calls = metrics.compute, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C while the second method is measured looks like
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics, "compute", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_quietly(exp, store, tmp_path, teachers)
    assert list(store.frame()["method"]) == ["full"]
    out = run_quietly(exp, store, tmp_path, teachers)
    assert len(out.resumed) == 1 and [r["method"] for r in out.stored] == ["fora", "steps"]
    assert sorted(store.frame()["method"]) == ["fora", "full", "steps"]


def test_method_that_cannot_run_is_skipped_with_reason(tmp_path, teachers, monkeypatch, caplog):
    from dsbench.core import NotApplicable
    from dsbench.methods.fora import Fora

    def unsupported(self, run):
        raise NotApplicable(f"fora does not support family {run.family}")

    monkeypatch.setattr(Fora, "reset", unsupported)
    store = Store(tmp_path / "r.db")
    with caplog.at_level("WARNING", logger="dsbench.runner"):
        out = run_quietly(_exp("skip", [{"name": "fora"}, {"name": "full"}]), store, tmp_path, teachers)
    assert [r["method"] for r in out.stored] == ["full"]
    assert out.skipped == [("mnist-dit", "fora", "fora does not support family dit")]
    assert "skipped fora on mnist-dit: fora does not support family dit" in caplog.text


def test_a_method_that_fails_to_set_up_stops_the_run_before_any_sampling(tmp_path, teachers, monkeypatch):
    from dsbench import metrics
    from dsbench.methods.fora import Fora

    def bad(self, run):
        raise ValueError("this schedule was trained for T=10")

    monkeypatch.setattr(Fora, "reset", bad)
    monkeypatch.setattr(metrics, "compute", lambda *a, **k: pytest.fail("sampled and scored before the failure"))
    store = Store(tmp_path / "r.db")
    with pytest.raises(ValueError, match="fora on mnist-dit: this schedule was trained for T=10"):
        run_quietly(_exp("fail", [{"name": "full"}, {"name": "fora"}]), store, tmp_path, teachers)
    assert len(store) == 0


# -- budget ----------------------------------------------------------------------------------------------------
def test_budget_bisection_matches_macs_for_toca_and_fora(tmp_path, teachers):
    from dsbench import methods

    exp = _exp(
        "budget", [{"name": "toca", "params": {"interval": 3}}, {"name": "fora"}], steps=10, budget={"macs_ratio": 0.5}
    )
    store = Store(tmp_path / "r.db")
    run_quietly(exp, store, tmp_path, teachers)
    frame = store.frame("budget")
    brackets = frame[frame["bracket"] == "above"]
    frame = frame[frame["bracket"] != "above"].set_index("method")
    toca, fora = frame.loc["toca"], frame.loc["fora"]
    # toca's ratio is continuous: the MACs land just under the budget
    assert 0.49 <= toca.macs_ratio <= 0.5 and toca.budget_macs_ratio == 0.5
    assert 0 < toca.tuned["ratio"] < 1 and toca.label == f"toca_N3_R{toca.tuned['ratio']:.2f}"
    # fora's interval is an integer: the smallest interval within budget (one less is above it)
    interval = fora.tuned["interval"]
    assert fora.macs_ratio <= 0.5 and isinstance(interval, int) and interval >= 2
    noted = {name: isinstance(run.budget_note, str) for name, run in (("toca", toca), ("fora", fora))}
    assert noted == {"toca": False, "fora": fora.macs_ratio < 0.49}  # a note when more than 2 % under the budget
    ctx = runner.load_model(exp, "mnist-dit", progress=False)
    assert ctx.macs_of(methods.build("fora", interval=interval - 1)) / ctx.macs_full > 0.5
    assert ctx.macs_of(methods.build("fora", interval=interval)) == fora.macs
    # off budget: the setting just above it ran too, and the leaderboard interpolates fora at the budget
    assert noted["fora"] and list(brackets["method"]) == ["fora"]  # at 10 steps no interval lands within 2 %
    above = brackets.iloc[0]
    assert above.tuned == {"interval": interval - 1} and above.macs_ratio > 0.5
    from dsbench import report

    record = next(r for r in report.leaderboard(store.frame("budget")).records() if r["method"].startswith("fora"))
    assert record["at_budget"] == "interpolated" and record["macs_ratio"] == 0.5
    t = (0.5 - fora.macs_ratio) / (above.macs_ratio - fora.macs_ratio)
    assert record["psnr"] == pytest.approx((1 - t) * fora.psnr + t * above.psnr)


def test_a_budget_list_skips_the_budgets_a_method_cannot_reach(tmp_path, teachers):
    exp = _exp("curve", [{"name": "toca"}], budget={"macs_ratio": [0.02, 0.6]})
    store = Store(tmp_path / "r.db")
    out = run_quietly(exp, store, tmp_path, teachers)
    assert [(r["method"], r["budget_macs_ratio"]) for r in out.stored] == [("toca", 0.6)]
    assert len(out.skipped) == 1 and "budget" in out.skipped[0][2] and "cheapest setting" in out.skipped[0][2]
    single = _exp("point", [{"name": "toca"}], budget={"macs_ratio": 0.02})  # one budget: the user's, an error
    with pytest.raises(ValueError, match="toca on mnist-dit: .*cheapest setting"):
        run_quietly(single, store, tmp_path, teachers)


def test_unreachable_budget_is_a_skip_not_a_crash():
    calls = []

    def macs_of(method):  # a fake cost curve: toca never goes below 0.6 of 1.0
        calls.append(method.config.ratio)
        return 0.6 + 0.4 * method.config.ratio

    with pytest.raises(runner.BudgetUnreachable, match="cheapest setting"):
        runner.tune("toca", {}, "ratio", 0.5, macs_of, steps=10)
    result = runner.tune("toca", {}, "ratio", 0.8, macs_of, steps=10)
    assert 0.79 < result["macs"] <= 0.8 and abs(result["value"] - 0.5) < 0.01


def test_quickstart_lists_every_registered_method():
    from dsbench import experiment, methods

    quickstart = experiment.load("experiments/quickstart.yaml")
    assert sorted(m.name for m in quickstart.methods) == methods.available()


def test_budget_note_says_why_a_run_is_off_budget():
    integer = {"evaluations": [(1, 100.0), (2, 55.0), (3, 40.0), (6, 30.0)]}
    assert runner.budget_note("fora", "interval", 0.5, 0.40, integer, 100.0) == (
        "interval is an integer: nearest reachable 0.400 (interval=3) / 0.550 (interval=2); the run takes the "
        "one within budget"
    )
    assert runner.budget_note("fora", "interval", 0.5, 0.495, integer, 100.0) is None  # within 2 %
    jump = {"evaluations": [(0.0, 100.0), (0.5, 60.0), (0.5001, 45.0), (1.0, 20.0)]}  # whole steps or tokens
    assert runner.budget_note("steps", "fraction", 0.5, 0.45, jump, 100.0).startswith(
        "MACs move in steps as fraction changes: nearest reachable 0.450 (fraction=0.5001) / 0.600 (fraction=0.5)"
    )
    cheap = {"evaluations": [(2, 60.0), (6, 30.0)]}  # every accepted setting is below the budget
    assert runner.budget_note("fora", "interval", 0.8, 0.60, cheap, 100.0) == (
        "interval cannot spend the budget: its most expensive accepted setting (interval=2) reaches 0.600 of full"
    )
    assert "has no budget field" in runner.budget_note("diffsparse", None, 0.5, 0.43)
