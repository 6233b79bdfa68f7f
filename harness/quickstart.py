"""``dsbench run`` and ``dsbench quickstart``: an experiment into a store, W&B, leaderboard, grids and plots.

The quickstart runs ``experiments/quickstart.yaml``: both embedded models, every registered method that can
run on them, one matched budget (MACs ratio 0.5), a small evaluation set; CPU only, offline, minutes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dsbench.methods
from dsbench import experiment, machine, report, runner
from dsbench.shard import Shard
from dsbench.store import Store
from dsbench.tracking import Tracker
from dsbench.validation import read_yaml

log = logging.getLogger("dsbench.quickstart")
QUICKSTART = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.yaml"


def execute(
    exp: experiment.Experiment,
    store_path: str | Path,
    *,
    force: bool = False,
    wandb: bool = True,
    artifacts: str | Path | None = None,
    progress: bool = True,
    summary: bool = True,
):
    """Run ``exp`` into the store at ``store_path`` (W&B files next to it); (outcome, the experiment's frame).
    Under ``accelerate launch`` only rank 0 opens the store and W&B; the other ranks draw their shards of the
    samples and get (empty outcome, None). ``summary``: print :func:`closing_summary` (where the store, the
    artifacts and the W&B files are) at the end."""
    shard = Shard()
    if not shard.is_main:
        return runner.run_experiment(exp, None, force=force, progress=False, shard=shard), None
    if progress:
        runner.quiet_libraries()
    store = Store(store_path)
    tracker = Tracker(dir=Path(store_path).parent) if wandb else None
    outcome = runner.run_experiment(
        exp, store, force=force, artifacts=artifacts, tracker=tracker, progress=progress, shard=shard
    )
    log.info(
        "%d runs stored, %d already in %s, %d skipped",
        len(outcome.stored),
        len(outcome.resumed),
        store_path,
        len(outcome.skipped),
    )
    frame = store.frame(exp.name)
    if summary:
        print(run_summary(exp, outcome, store_path, wandb=wandb) + "\n")
    return outcome, frame


def run_summary(exp: experiment.Experiment, outcome, store_path: str | Path, *, wandb: bool) -> str:
    """:func:`closing_summary` of one ``dsbench run``, with the commands that show its tables and figures."""
    return closing_summary(
        f"dsbench run {exp.name}",
        [outcome],
        store_path,
        wandb_dir=Path(store_path).parent if wandb else None,
        reports=f"`dsbench table --store {store_path}` (leaderboard), "
        f"`dsbench plot --store {store_path} --out DIR` (figures)",
    )


def _runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def wandb_runs(folder: Path, since: float) -> list[Path]:
    """The W&B run folders under ``folder/wandb`` written since ``since`` (offline-run-*, run-*), oldest first."""
    root = folder / "wandb"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(("offline-run-", "run-"))]
    return sorted((p for p in found if p.stat().st_mtime >= since - 1), key=lambda p: p.stat().st_mtime)


def closing_summary(
    what: str,
    outcomes: list,
    store_path: str | Path,
    *,
    wandb_dir: Path | None,
    outputs: Path | None = None,
    written: str = "",
    reports: str = "",
    elapsed: float | None = None,
) -> str:
    """The lines printed when a command ends: how many runs were measured now and how many reused from the store,
    then where everything went — the store, the artifacts folder, the tables and figures (``outputs`` with the
    files ``written``, or the commands ``reports`` that make them) and the W&B run folders written now
    (``wandb_dir``: the folder holding ``wandb/``; None: W&B was off)."""
    measured = sum(len(o.stored) for o in outcomes)
    brackets = sum(o.brackets for o in outcomes)
    reused = sum(len(o.resumed) for o in outcomes)
    skipped = sum(len(o.skipped) for o in outcomes)
    pending = [p for o in outcomes for p in o.pending]
    started = min((o.started for o in outcomes), default=time.time())
    elapsed = time.time() - started if elapsed is None else elapsed
    counts = f"{_runs(measured)} measured now"
    if brackets:
        counts += f" ({brackets} of them the setting just above an off-budget one, for interpolation)"
    counts += f", {reused} reused from the store"
    counts += f", {skipped} skipped" if skipped else ""
    took = f"{elapsed:.0f} s" + (f" on {machine.describe()}" if measured else "")
    lines = [f"\n{what}: {counts}; {took}", f"  store:      {Path(store_path).resolve()}"]
    artifacts = sorted({Path(o.artifacts).resolve() for o in outcomes if o.artifacts})
    if artifacts:
        lines.append(
            f"  artifacts:  {', '.join(map(str, artifacts))} (a folder per run: samples.png, decisions.png/npy/json)"
        )
    if outputs is not None:
        lines.append(f"  outputs:    {outputs.resolve()}" + (f" ({written})" if written else ""))
    if reports:
        lines.append(f"  reports:    {reports}")
    if wandb_dir is None:
        lines.append("  W&B:        off")
    else:
        runs = wandb_runs(Path(wandb_dir), started)
        if runs:
            offline = [r for r in runs if r.name.startswith("offline-run-")]
            lines.append(
                f"  W&B:        {(Path(wandb_dir) / 'wandb').resolve()} ({_runs(len(runs))} written now, "
                f"latest {runs[-1].name})"
                + (f"; upload them with `wandb sync {offline[-1].parent.resolve()}/offline-run-*`" if offline else "")
            )
        else:
            folder = Path(wandb_dir).resolve() / "wandb"
            lines.append(f"  W&B:        nothing mirrored now (no run measured); its folder is {folder}")
    if pending:
        lines.append(f"  pending:    {len(pending)} row(s) the store could not take, kept beside it: {pending[0]}")
    return "\n".join(lines)


def leaderboard_markdown(frame) -> str:
    return report.write(report.leaderboard(frame), "md") if len(frame) else "(no runs)"


def write_outputs(frame, out: Path) -> None:
    """leaderboard.md/.csv, per-model sample grids (teacher row over each method's row), Pareto plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(leaderboard_markdown(frame) + "\n")
    report.write(report.leaderboard(frame), "csv", out / "leaderboard.csv")
    for model, runs in frame.groupby("model"):
        sample_grid(runs, out / "grids" / f"{model}.png")
    report.pareto_plot(frame, out / "pareto.png")


def sample_grid(runs, path: Path) -> None:
    """One model's runs as a sample figure (:func:`dsbench.report.sample_figure`): panels in rows of three,
    ``full`` first, each its samples.png with the "teacher" row (the uncached model, same seeds) over the
    method's, titled with label, MAC ratio and speedup; the figure's title states model, experiment and
    sample size. Nothing is written when no run has a samples.png."""
    runs = runs[runs["artifacts"].notna()]
    if not runs.empty:
        report.sample_figure(runs, path)


def main(out: str | Path = "runs/quickstart", *, force: bool = False, wandb: bool = True) -> None:
    """Every run measured on this machine into ``out`` (a fresh folder by default); runs already in ``out``'s
    store are reused and the printout says how many, measured where and when."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file; give a folder")
    runner.check_writable(out, "--out")
    start = time.perf_counter()
    exp, unavailable = quickstart_experiment()
    for reason in unavailable:
        print(f"skipped: {reason}")
    outcome, frame = execute(
        exp, out / "dsbench.db", force=force, wandb=wandb, artifacts=out / "artifacts", summary=False
    )
    if frame is None:  # not rank 0 of an `accelerate launch`
        return
    write_outputs(frame, out)
    print(leaderboard_markdown(frame))
    for model, method, reason in outcome.skipped:
        print(f"skipped {method} on {model}: {reason}")
    if outcome.resumed:
        print("\n" + resumed_note(frame, outcome.resumed))
    print(
        closing_summary(
            "dsbench quickstart",
            [outcome],
            out / "dsbench.db",
            wandb_dir=out if wandb else None,
            outputs=out,
            written="leaderboard.md, leaderboard.csv, grids/<model>.png, pareto.png",
            elapsed=time.perf_counter() - start,
        )
    )


def quickstart_experiment() -> tuple[experiment.Experiment, list[str]]:
    """The quickstart experiment without the methods whose optional package is not installed (the other
    libraries' arms): the quickstart runs everything else and says what it left out and how to install it."""
    data = read_yaml(QUICKSTART, "experiment")
    kept, unavailable = [], []
    for entry in data["methods"]:
        reason = dsbench.methods.base.missing_package(entry["name"])
        if reason is None:
            kept.append(entry)
        else:
            unavailable.append(reason)
    data["methods"] = kept
    return experiment.parse(data, str(QUICKSTART), default_name=QUICKSTART.stem), unavailable


def resumed_note(frame, resumed: list[str]) -> str:
    """Which rows were reused from the store rather than measured now: how many, on which machine, when."""
    ids = set(resumed)
    identity = frame["identity"] if "identity" in frame.columns else frame["run_id"]
    rows = frame[frame["run_id"].isin(ids) | identity.isin(ids)]
    machines = rows["machine"].fillna("an unrecorded machine") if "machine" in rows.columns else None
    where = ", ".join(sorted(set(machines))) if machines is not None else "an unrecorded machine"
    dates = [time.strftime("%Y-%m-%d", time.localtime(t)) for t in rows["created_at"]]
    when = min(dates) if min(dates) == max(dates) else f"{min(dates)} to {max(dates)}"
    return (
        f"{len(ids)} of these runs were reused from the store, measured on {where} on {when}, not now; "
        "pass --force to measure them on this machine"
    )
