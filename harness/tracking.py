"""Weights & Biases mirror of the results store (docs/architecture.md): one W&B run per stored row (job_type
"run"), one summary run per experiment ("experiment-summary") and one per sweep ("sweep-summary").

The store stays the source of truth: the mirror is written after the row is stored, and any W&B failure
(no service, bad key, full disk, a broken API) becomes a warning, never an exception, so nothing is lost.
Mode comes from ``WANDB_MODE`` (default ``offline``: runs land in ``<dir>/wandb/offline-run-*`` and can
be ``wandb sync``-ed later).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

# row fields logged as metrics (besides every other numeric field that is not configuration)
CONFIG_FIELDS = (
    "run_id",
    "experiment",
    "model",
    "family",
    "method",
    "label",
    "params",
    "config",
    "tuned",
    "budget_macs_ratio",
    "sampler",
    "steps",
    "guidance",
    "eval_set",
    "n_samples",
    "seed",
    "code_version",
    "latency_batch",
    "latency_repeats",
    "artifacts",
    "full_steps",
    "created_at",
)


JOB_RUN, JOB_EXPERIMENT, JOB_SWEEP = "run", "experiment-summary", "sweep-summary"  # W&B job_type of each run kind
ARTIFACT_FILES = ("decisions.npy", "decisions.json", "decisions.png")  # a run's decision map, from its folder
TAG_LENGTH = 64  # W&B rejects longer tags


class Tracker:
    """``log_run(row)`` per stored row, ``summary(experiment, frame)`` at the end of an experiment,
    ``sweep_summary(name, frame)`` at the end of a sweep; failures only warn.

    ``context``: set by a sweep before each of its points or trials ({"name", "kind", "point"/"trial",
    "points"/"trials", "values"}); it goes into each run's config (``sweep``) and tags, and turns the
    per-experiment summary off (a sweep logs one table, :meth:`sweep_summary`, not one per point)."""

    def __init__(self, project: str = "dsbench", dir: str | Path = "results", mode: str | None = None):
        self.project = project
        self.dir = Path(dir)
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        os.environ.setdefault("WANDB_SILENT", "true")  # our progress bars and log lines say what happens
        self.failures: list[str] = []
        self.context: dict[str, Any] | None = None

    def _init(self, **kwargs):
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.project, dir=str(self.dir), mode=self.mode, reinit="finish_previous", **kwargs)

    def _guard(self, what: str, fn) -> bool:
        try:
            fn()
            return True
        except Exception as err:  # noqa: BLE001 — a tracking failure must never cost the stored row
            message = f"W&B mirror failed for {what} ({type(err).__name__}: {err}); the local store row is kept"
            self.failures.append(message)
            warnings.warn(message, stacklevel=3)
            return False

    def tags(self, row: dict) -> list[str]:
        """Model family, model, method, budget (and the sweep) of a run, as W&B tags."""
        budget = row.get("budget_macs_ratio")
        tags = [
            f"family:{row.get('family') or '?'}",
            f"model:{row.get('model') or '?'}",
            f"method:{row.get('method') or '?'}",
            f"budget:{budget:g}" if isinstance(budget, (int, float)) else "budget:none",
        ]
        if self.context:
            tags.append(f"sweep:{self.context.get('name')}")
        return [t[:TAG_LENGTH] for t in tags]

    def log_run(self, row: dict) -> bool:
        """Config, tags, per-step history (MACs and decisions, one ``wandb.log`` per denoising step), the final
        metrics, the sample grid and decision-map images, and the decision map and schedule as artifacts."""

        def mirror():
            import wandb

            config = {k: row.get(k) for k in CONFIG_FIELDS if k in row}
            if self.context:
                config["sweep"] = self.context
            run = self._init(
                name=row["label"],
                group=row.get("experiment"),
                job_type=JOB_RUN,
                config=config,
                tags=self.tags(row),
            )
            try:
                numbers = {
                    k: v
                    for k, v in row.items()
                    if k not in CONFIG_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                folder = Path(row["artifacts"]) if row.get("artifacts") else None
                images = {
                    name: wandb.Image(str(folder / f"{name}.png"))
                    for name in ("samples", "decisions")
                    if folder is not None and (folder / f"{name}.png").is_file()
                }
                history = step_history(row, folder)
                for i, values in enumerate(history[:-1]):
                    wandb.log(values, step=i)
                # the run's metrics and images at its last denoising step (step 0 without a per-step record)
                wandb.log({**(history[-1] if history else {}), **numbers, **images}, step=max(len(history) - 1, 0))
                run.summary.update(numbers)
                for artifact in artifacts(row, folder):
                    run.log_artifact(artifact)
            finally:
                run.finish()

        return self._guard(row.get("label", row.get("run_id", "?")), mirror)

    def summary(self, experiment: str, frame) -> bool:
        """A summary run holding the experiment's leaderboard as a W&B table (not inside a sweep: the sweep
        logs one table for all its points, :meth:`sweep_summary`)."""
        if self.context:
            return True
        return self._table(f"{experiment}-summary", experiment, JOB_EXPERIMENT, "leaderboard", frame, {})

    def sweep_summary(self, sweep: str, frame, config: dict | None = None) -> bool:
        """One run per sweep holding its table (one row per point or trial and run) as a W&B table."""
        return self._table(f"{sweep}-sweep", sweep, JOB_SWEEP, "sweep", frame, {"sweep": sweep, **(config or {})})

    def _table(self, name: str, group: str, job_type: str, key: str, frame, config: dict) -> bool:
        def mirror():
            import wandb

            run = self._init(name=name, group=group, job_type=job_type, config=config, tags=[job_type])
            try:
                columns = [c for c in frame.columns if c not in ("params", "config", "tuned", "full_steps")]
                table = frame[columns].copy()
                for c in columns:  # W&B tables take numbers and strings; lists and dicts become text
                    if table[c].dtype == object:
                        table[c] = table[c].map(lambda v: "" if v is None else str(v))
                wandb.log({key: wandb.Table(dataframe=table)})
                run.summary["rows"] = len(table)
            finally:
                run.finish()

        return self._guard(f"{name} ({job_type})", mirror)


def _read_decisions(folder: Path | None) -> dict:
    if folder is None or not (folder / "decisions.json").is_file():
        return {}
    try:
        data = json.loads((folder / "decisions.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def step_history(row: dict, folder: Path | None) -> list[dict[str, Any]]:
    """One dict per denoising step from the run's stored record: ``step/macs`` (the step's Linear/Conv MACs,
    where the row or decisions.json carries ``macs_per_step``), ``step/full`` (every layer computed),
    ``step/kept_fraction`` (mean kept fraction of the layers, decisions.json), ``step/layers_full``,
    ``step/layers_partial`` and ``step/layers_reused`` (counts of layers by decision). Empty without a record."""
    decisions = _read_decisions(folder)
    kept = decisions.get("kept_fraction") or []
    macs = row.get("macs_per_step") or decisions.get("macs_per_step") or []
    full = set(row.get("full_steps") or [])
    n = max(len(kept), len(macs))
    if n == 0:
        return []
    out = []
    for i in range(n):
        values: dict[str, Any] = {"step/full": int(i in full)}
        if i < len(macs) and isinstance(macs[i], (int, float)):
            values["step/macs"] = float(macs[i])
        if i < len(kept) and kept[i]:
            layer = [float(v) for v in kept[i]]
            values["step/kept_fraction"] = sum(layer) / len(layer)
            values["step/layers_full"] = sum(v >= 1.0 for v in layer)
            values["step/layers_reused"] = sum(v <= 0.0 for v in layer)
            values["step/layers_partial"] = len(layer) - values["step/layers_full"] - values["step/layers_reused"]
        out.append(values)
    return out


def artifacts(row: dict, folder: Path | None) -> list:
    """W&B artifacts of a run: its decision map (type ``decisions``: decisions.npy/.json/.png from its folder)
    and every schedule file its params or config name (type ``schedule``: a DiffSparse schedule.json)."""
    import wandb

    out = []
    key = str(row.get("run_id") or "run")[:16]
    files = [folder / f for f in ARTIFACT_FILES if folder is not None and (folder / f).is_file()]
    if files:
        art = wandb.Artifact(f"decisions-{key}", type="decisions", metadata={"label": row.get("label")})
        for f in files:
            art.add_file(str(f), name=f.name)
        out.append(art)
    seen = set()
    for source in (row.get("params") or {}, row.get("config") or {}):
        for name, value in sorted(source.items()) if isinstance(source, dict) else ():
            if name != "schedule" or not isinstance(value, str) or not Path(value).is_file() or value in seen:
                continue
            seen.add(value)
            art = wandb.Artifact(f"schedule-{key}", type="schedule", metadata={"path": value})
            art.add_file(value, name=Path(value).name)
            out.append(art)
    return out
