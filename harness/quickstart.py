"""``dsbench run`` and ``dsbench quickstart``: an experiment into a store, W&B, leaderboard, grids and plots.

The quickstart runs ``experiments/quickstart.yaml``: both embedded models, every registered method that can
run on them, one matched budget (MACs ratio 0.5), a small evaluation set; CPU only, offline, minutes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from harness import experiment, machine, runner
from harness.store import COLUMNS, Store

log = logging.getLogger("dsbench.quickstart")
QUICKSTART = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.yaml"
# quality metrics the fallback leaderboard sorts by, in order of preference, and their direction
_SORT = (("lpips_alex", True), ("fid", True), ("psnr", False))


def execute(exp: experiment.Experiment, store_path: str | Path, *, force: bool = False, wandb: bool = True,
            artifacts: str | Path | None = None, progress: bool = True):
    """Run ``exp`` into the store at ``store_path`` (W&B files next to it); (outcome, the experiment's frame).
    Under ``accelerate launch`` only rank 0 opens the store and W&B; the other ranks draw their shards of the
    samples and get (empty outcome, None)."""
    from harness.shard import Shard
    from harness.tracking import Tracker

    shard = Shard()
    if not shard.is_main:
        return runner.run_experiment(exp, None, force=force, progress=False, shard=shard), None
    store = Store(store_path)
    tracker = Tracker(dir=Path(store_path).parent) if wandb else None
    outcome = runner.run_experiment(exp, store, force=force, artifacts=artifacts, tracker=tracker, progress=progress,
                                    shard=shard)
    log.info("%d runs stored, %d already in %s, %d skipped", len(outcome.stored), len(outcome.resumed), store_path,
             len(outcome.skipped))
    return outcome, store.frame(exp.name)


def metric_columns(frame) -> list[str]:
    return [c for c in frame.columns if c not in COLUMNS and frame[c].dtype.kind == "f"
            and c not in ("macs_cfg_counted",)]


def simple_leaderboard(frame):
    """Per model, one row per run: MAC ratio, speedup, latency and every metric, best quality first."""
    metrics = [c for c in metric_columns(frame)]
    table = frame[["model", "label", "macs_ratio", "speedup", "latency_s", *metrics]].copy()
    sort = next(((c, asc) for c, asc in _SORT if c in table.columns), None)
    by, ascending = (["model", sort[0]], [True, sort[1]]) if sort else (["model"], [True])
    return table.sort_values(by, ascending=ascending).reset_index(drop=True)


def _markdown(table) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def leaderboard_markdown(frame) -> str:
    """The REPORT module's leaderboard when present, else :func:`simple_leaderboard`."""
    if len(frame) == 0:
        return "(no runs)"
    try:
        from harness import report

        return report.write(report.leaderboard(frame), "md")
    except (ImportError, AttributeError):
        return _markdown(simple_leaderboard(frame))


def write_outputs(frame, out: Path) -> None:
    """leaderboard.md/.csv, per-model sample grids (teacher row over each method's row), Pareto plot."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(leaderboard_markdown(frame) + "\n")
    try:
        from harness import report

        report.write(report.leaderboard(frame), "csv", out / "leaderboard.csv")
    except (ImportError, AttributeError):
        simple_leaderboard(frame).to_csv(out / "leaderboard.csv", index=False)
    for model, runs in frame.groupby("model"):
        sample_grid(runs, out / "grids" / f"{model}.png")
    try:
        from harness import report

        report.pareto_plot(frame, out / "pareto.png")
    except (ImportError, AttributeError):
        log.info("harness.report.pareto_plot is not available: no Pareto plot written")


def sample_grid(runs, path: Path) -> None:
    """One panel per run: its samples.png (teacher above, method below), titled with label and MAC ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    runs = runs.sort_values("macs_ratio", ascending=False)
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.9 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs.itertuples()):
        ax.imshow(Image.open(Path(run.artifacts) / "samples.png"))
        ax.set_title(f"{run.label} (MACs ×{run.macs_ratio:.2f}, {run.speedup:.2f}× faster): teacher / method",
                     fontsize=9)
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
    print(f"\nquickstart: {runs} runs in {out}/ (leaderboard.md, leaderboard.csv, grids/, dsbench.db"
          f"{', wandb/' if wandb else ''}) in {time.perf_counter() - start:.0f} s; "
          f"{len(outcome.stored)} measured now on {machine.describe()}")
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
    return (f"{len(ids)} of these runs were reused from the store, measured on {where} on {when}, not now; "
            "pass --force to measure them on this machine")
