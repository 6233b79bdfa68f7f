"""Weights & Biases mirror of the results store (docs/architecture.md): one W&B run per stored row, one summary run.

The store stays the source of truth: the mirror is written after the row is stored, and any W&B failure
(no service, bad key, full disk, a broken API) becomes a warning, never an exception, so nothing is lost.
Mode comes from ``WANDB_MODE`` (default ``offline``: runs land in ``<dir>/wandb/offline-run-*`` and can
be ``wandb sync``-ed later).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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


class Tracker:
    """``log_run(row)`` per stored row, ``summary(experiment, frame)`` at the end; failures only warn."""

    def __init__(self, project: str = "dsbench", dir: str | Path = "results", mode: str | None = None):
        self.project = project
        self.dir = Path(dir)
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        os.environ.setdefault("WANDB_SILENT", "true")  # our progress bars and log lines say what happens
        self.failures: list[str] = []

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

    def log_run(self, row: dict) -> bool:
        """Config, metrics, the sample grid and the decision map of one stored run."""

        def mirror():
            import wandb

            config = {k: row.get(k) for k in CONFIG_FIELDS if k in row}
            run = self._init(name=row["label"], group=row.get("experiment"), job_type=row.get("model"), config=config)
            try:
                numbers = {
                    k: v
                    for k, v in row.items()
                    if k not in CONFIG_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                folder = Path(row.get("artifacts") or "")
                images = {
                    name: wandb.Image(str(folder / f"{name}.png"))
                    for name in ("samples", "decisions")
                    if (folder / f"{name}.png").is_file()
                }
                wandb.log({**numbers, **images})
                run.summary.update(numbers)
            finally:
                run.finish()

        return self._guard(row.get("label", row.get("run_id", "?")), mirror)

    def summary(self, experiment: str, frame) -> bool:
        """A summary run holding the experiment's leaderboard as a W&B table."""

        def mirror():
            import wandb

            run = self._init(name=f"{experiment}-summary", group=experiment, job_type="summary")
            try:
                columns = [c for c in frame.columns if c not in ("params", "config", "tuned", "full_steps")]
                table = frame[columns].copy()
                for c in columns:  # W&B tables take numbers and strings; lists and dicts become text
                    if table[c].dtype == object:
                        table[c] = table[c].map(lambda v: "" if v is None else str(v))
                wandb.log({"leaderboard": wandb.Table(dataframe=table)})
            finally:
                run.finish()

        return self._guard(f"{experiment} summary", mirror)
