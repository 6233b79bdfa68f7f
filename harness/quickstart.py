"""``dsbench run`` and ``dsbench quickstart``: an experiment into a store, W&B, leaderboard, grids and plots.

The quickstart runs ``experiments/quickstart.yaml``: both embedded models, every registered method that can
run on them, one matched budget (MACs ratio 0.5), a small evaluation set; CPU only, offline, minutes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dsbench import experiment, machine, report, runner
from dsbench.shard import Shard
from dsbench.store import Store
from dsbench.tracking import Tracker

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
):
    """Run ``exp`` into the store at ``store_path`` (W&B files next to it); (outcome, the experiment's frame).
    Under ``accelerate launch`` only rank 0 opens the store and W&B; the other ranks draw their shards of the
    samples and get (empty outcome, None)."""
    shard = Shard()
    if not shard.is_main:
        return runner.run_experiment(exp, None, force=force, progress=False, shard=shard), None
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
    return outcome, store.frame(exp.name)


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
    """One panel per run: its samples.png (teacher above, method below), titled with label and MAC ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    runs = runs[runs["artifacts"].notna()].sort_values("macs_ratio", ascending=False)
    if runs.empty:
        return
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.9 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs.itertuples()):
        ax.imshow(Image.open(Path(run.artifacts) / "samples.png"))
        ax.set_title(
            f"{run.label} (MACs ×{run.macs_ratio:.2f}, {run.speedup:.2f}× faster): teacher / method", fontsize=9
        )
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out: str | Path = "runs/quickstart", *, force: bool = False, wandb: bool = True) -> None:
    """Every run measured on this machine into ``out`` (a fresh folder by default); runs already in ``out``'s
    store are reused and the printout says how many, measured where and when."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file; give a folder")
    runner.check_writable(out, "--out")
    start = time.perf_counter()
    exp = experiment.load(QUICKSTART)
    outcome, frame = execute(exp, out / "dsbench.db", force=force, wandb=wandb, artifacts=out / "artifacts")
    if frame is None:  # not rank 0 of an `accelerate launch`
        return
    write_outputs(frame, out)
    print(leaderboard_markdown(frame))
    for model, method, reason in outcome.skipped:
        print(f"skipped {method} on {model}: {reason}")
    runs = len(outcome.stored) + len(outcome.resumed)
    print(
        f"\nquickstart: {runs} runs in {out}/ (leaderboard.md, leaderboard.csv, grids/, dsbench.db"
        f"{', wandb/' if wandb else ''}) in {time.perf_counter() - start:.0f} s; "
        f"{len(outcome.stored)} measured now on {machine.describe()}"
    )
    if outcome.resumed:
        print(resumed_note(frame, outcome.resumed))


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
