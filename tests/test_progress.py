"""Progress and endings: a budget search's progress in words that read right, one line per run in a log, nested
bars that do not garble, no stray library lines, and the closing summary saying where everything went."""

import logging
import os
import re
from pathlib import Path

import pytest

from dsbench import experiment, quickstart, runner

os.environ.setdefault("WANDB_MODE", "offline")
BASE = {
    "models": ["mnist-dit"],
    "steps": 4,
    "eval": {"size": 2},
    "metrics": ["psnr"],
    "latency": {"repeats": 1, "warmup": 0},
}


def _exp(name, methods, **extra):
    return experiment.parse({"name": name, **BASE, "methods": methods, **extra}, f"{name}.yaml")


def _toca_cost(method):  # a fake cost curve: MACs of full = 1.0, toca from 0.6 (ratio 0) to 1.0 (ratio 1)
    return 0.6 + 0.4 * method.config.ratio


# -- the budget search ---------------------------------------------------------------------------------------
def test_bisection_text_is_a_fraction_of_full_beside_the_budget():
    assert runner.bisection_text("ratio", 0.25, 62.0, 50.0, full=100.0) == (
        "ratio=0.25: MACs 0.620 of full, budget 0.500"
    )
    assert runner.bisection_text("interval", 3, 40.0, 50.0, full=100.0) == (
        "interval=3: MACs 0.400 of full, budget 0.500"
    )
    # without the full model's MACs: the ratio to the budget, labelled as such (never a bare "macs/budget=2.000")
    assert runner.bisection_text("ratio", 0.25, 100.0, 50.0) == "ratio=0.25: MACs 2.000 × the budget"
    assert runner.bisection_text("ratio", 0.0576171875, 60.0, 60.0, full=100.0).startswith("ratio=0.05762: ")


def test_budget_search_in_a_log_is_one_line_with_the_choice(capsys, monkeypatch):
    monkeypatch.setattr(runner, "interactive", lambda: False)  # a CI log, a file
    result = runner.tune("toca", {}, "ratio", 0.8, _toca_cost, steps=10, progress=True, full=1.0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    count = len(result["evaluations"])
    assert lines[0].startswith(f"budget search toca.ratio: {count} MAC counts, chose ratio=")
    assert lines[0].endswith(f"MACs {result['macs']:.3f} of full, budget 0.800")
    assert "macs/budget" not in err and "?run/s" not in err and "\r" not in err


def test_budget_search_on_a_terminal_shows_fractions_of_full(capsys, monkeypatch):
    monkeypatch.setattr(runner, "interactive", lambda: True)
    runner.tune("toca", {}, "ratio", 0.8, _toca_cost, steps=10, progress=True, full=1.0)
    err = capsys.readouterr().err
    assert "budget search toca.ratio" in err and "MAC counts" in err
    assert re.search(r"ratio=[0-9.]+: MACs 0\.\d{3} of full, budget 0\.800", err), err
    assert "macs/budget" not in err and "?run/s" not in err
    # the bar is gone when the search ends (leave=False) and its choice stays, as one line above
    assert (
        "budget search toca.ratio: 3 MAC counts, chose ratio=0.5: MACs 0.800 of full, budget 0.800"
        in (err.rstrip().splitlines()[-1])
    )


def test_budget_search_without_progress_prints_nothing(capsys):
    runner.tune("toca", {}, "ratio", 0.8, _toca_cost, steps=10, full=1.0)
    assert capsys.readouterr().err == ""


# -- progress levels -------------------------------------------------------------------------------------------
def test_runs_in_a_log_are_one_line_each_with_a_total(capsys, monkeypatch):
    monkeypatch.setattr(runner, "interactive", lambda: False)
    with runner.Progress("small", total=3, unit="run") as bar:
        for name in ("full", "toca", "fora"):
            bar.start(f"mnist-dit {name} seed 0")
            bar.phase("samples")  # in-between states: a terminal's bar only
            bar.advance(1)
    assert capsys.readouterr().err.splitlines() == [
        "small 1/3 run: mnist-dit full seed 0",
        "small 2/3 run: mnist-dit toca seed 0",
        "small 3/3 run: mnist-dit fora seed 0",
    ]


def test_nested_bars_on_a_terminal_take_their_own_rows(capsys, monkeypatch):
    monkeypatch.setattr(runner, "interactive", lambda: True)
    outer = runner.Progress("small", total=3, unit="run")
    inner = runner.Progress("  samples", total=8, unit="image", level=1)
    assert (outer.bar.pos, outer.bar.leave) == (0, True)
    assert (abs(inner.bar.pos), inner.bar.leave) == (1, False)
    inner.advance(8)
    inner.close()
    outer.advance(1)
    outer.close()
    err = capsys.readouterr().err
    assert "1/3 run" in err and "0/8 image" in err  # tqdm redraws at most every 0.1 s: the first state


def test_disabled_progress_is_silent(capsys):
    with runner.Progress("small", total=3, unit="run", enabled=False) as bar:
        bar.start("x")
        bar.advance(1, "y")
        bar.result("z")
    assert capsys.readouterr() == ("", "")


def test_library_noise_is_silenced(monkeypatch):
    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    font = logging.getLogger("matplotlib.font_manager")
    monkeypatch.setattr(logging.getLogger("matplotlib"), "level", logging.NOTSET)
    runner.quiet_libraries()
    assert not font.isEnabledFor(logging.INFO)  # "generated new fontManager" in a fresh HOME
    assert os.environ["DIFFUSERS_VERBOSITY"] == os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    import diffusers

    assert diffusers.utils.logging.get_verbosity() == logging.ERROR


# -- the closing summary -------------------------------------------------------------------------------------------
def _paths(text: str, label: str) -> list[Path]:
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{label}:"))
    return [Path(p) for p in re.findall(r"(?<![^\s`])(/[^\s,()`]+)", line)]


def test_run_ends_with_a_summary_whose_paths_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "interactive", lambda: False)
    store = tmp_path / "out" / "dsbench.db"
    outcome, frame = quickstart.execute(_exp("ending", [{"name": "full"}]), store, wandb=True)
    printed = capsys.readouterr()
    summary = printed.out[printed.out.index("dsbench run ending:") :]
    assert "1 run measured now, 0 reused from the store; " in summary and " s on " in summary
    assert _paths(summary, "store") == [store.resolve()] and store.is_file()
    (artifacts,) = _paths(summary, "artifacts")
    assert artifacts.is_dir() and any(artifacts.rglob("samples.png"))
    wandb_dir, *runs = _paths(summary, "W&B")
    assert wandb_dir.is_dir() and wandb_dir.name == "wandb"
    assert re.search(r"\d+ runs? written now, latest offline-run-", summary)
    latest = re.search(r"latest (offline-run-\S+)\)", summary).group(1)
    assert (wandb_dir / latest).is_dir()
    assert "wandb sync" in summary
    # the log: how many runs in all and to measure, then one line per run (plain lines, no carriage returns)
    assert "ending: 1 runs, 0 already in the store, 1 to measure" in printed.err
    assert "ending 1/1 run: mnist-dit full seed 0" in printed.err and "\r" not in printed.err

    again, _ = quickstart.execute(_exp("ending", [{"name": "full"}]), store, wandb=False)  # resumed
    summary = capsys.readouterr().out
    assert "0 runs measured now, 1 reused from the store" in summary and "W&B:        off" in summary
    assert _paths(summary, "store") == [store.resolve()]


def test_closing_summary_counts_brackets_skips_and_pending(tmp_path):
    outcome = runner.Outcome(
        stored=[{"bracket": None}, {"bracket": "above"}, {}],
        resumed=["a", "b"],
        skipped=[("mnist-dit", "dato", "no")],
        pending=[str(tmp_path / "pending" / "x.json")],
        artifacts=str(tmp_path),
    )
    (tmp_path / "wandb").mkdir()
    text = quickstart.closing_summary(
        "dsbench reproduce", [outcome], tmp_path / "r.db", wandb_dir=tmp_path, outputs=tmp_path, written="README.md"
    )
    head = text.strip().splitlines()[0]
    assert head.startswith("dsbench reproduce: 3 runs measured now (")
    assert "(1 of them the setting just above an off-budget one, for interpolation)" in head
    assert "2 reused from the store, 1 skipped" in head
    assert f"outputs:    {tmp_path.resolve()} (README.md)" in text
    assert "nothing mirrored now" in text and "pending:    1 row(s)" in text


@pytest.mark.parametrize("wandb", [False])
def test_quickstart_main_ends_with_the_summary(tmp_path, capsys, monkeypatch, wandb):
    """quickstart.main on a one-method experiment: the summary is the last thing printed, its paths exist."""
    monkeypatch.setattr(runner, "interactive", lambda: False)
    small = tmp_path / "small.yaml"
    small.write_text(
        "name: qs\nmodels: [mnist-dit]\nsteps: 4\neval: {size: 2}\nmetrics: [psnr]\n"
        "latency: {repeats: 1, warmup: 0}\nmethods: [{name: full}]\n"
    )
    monkeypatch.setattr(quickstart, "QUICKSTART", small)
    out = tmp_path / "qs"
    quickstart.main(out, wandb=wandb)
    printed = capsys.readouterr().out
    summary = printed[printed.index("dsbench quickstart:") :]
    assert summary.rstrip().splitlines()[-1].strip().startswith("W&B:")
    (outputs,) = _paths(summary, "outputs")
    assert outputs == out.resolve() and (outputs / "leaderboard.md").is_file()
    assert _paths(summary, "store")[0].is_file() and _paths(summary, "artifacts")[0].is_dir()


def test_images_bar_draws_batch_by_batch_the_same_images(capsys, monkeypatch):
    """With a bar, a run's images are drawn one bundle batch at a time (the bundle's own batch size, each image's
    noise from its index): the same images as one call, and the bar counts them."""
    import types

    import torch

    calls = []

    def sample(conditions, seed, steps=None, start=0, batch_size=2):
        calls.append((list(conditions), start))
        return torch.stack(
            [torch.full((1, 2, 2), seed * 100 + start + i, dtype=torch.uint8) for i in range(len(conditions))]
        )

    pipeline = types.SimpleNamespace(set_progress_bar_config=lambda **kw: None)
    bundle = types.SimpleNamespace(pipeline=pipeline, sample=sample)
    ctx = runner.ModelContext(bundle, "ddim", 4, 1.0, False, None, list("abcde"), None, progress=True)
    monkeypatch.setattr(runner, "interactive", lambda: False)
    whole, _ = ctx.sample(list("abcde"), 1, desc=None, start=10)
    assert calls == [(list("abcde"), 10)]
    calls.clear()
    batched, _ = ctx.sample(list("abcde"), 1, desc="  samples", start=10)
    assert calls == [(["a", "b"], 10), (["c", "d"], 12), (["e"], 14)]
    assert torch.equal(whole, batched)
    monkeypatch.setattr(runner, "interactive", lambda: True)
    ctx.sample(list("abcde"), 1, desc="  samples")
    assert "  samples 0/5 image" in capsys.readouterr().err


def test_reproduce_ends_with_the_summary(tmp_path, capsys, monkeypatch):
    from dsbench.cli import main as cli

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    assert cli(["reproduce", "--only", "table3", "--out", str(tmp_path / "paper")]) == 0
    printed = capsys.readouterr().out
    summary = printed[printed.index("dsbench reproduce:") :]
    assert "0 runs measured now, 0 reused from the store" in summary and "W&B:        off" in summary
    (outputs,) = _paths(summary, "outputs")
    assert outputs == (tmp_path / "paper").resolve() and (outputs / "README.md").is_file()
    assert _paths(summary, "store") == [(tmp_path / "paper" / "dsbench.db").resolve()]
    assert all(path.exists() for label in ("store", "outputs") for path in _paths(summary, label))
