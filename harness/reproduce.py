"""``dsbench reproduce``: the DiffSparse paper's tables, figures and claims regenerated on the embedded models.

    dsbench reproduce [--only table1,table5,...] [--out results/paper]

For every selected table with an embedded analogue (:class:`dsbench.reference_results.Analogue`) it trains the
DiffSparse schedules the analogue's experiment file names and that are not there yet (each from the training
file that lists it), runs the experiment into ``<out>/dsbench.db`` (runs already there are kept: an
interrupted reproduction resumes), and writes ``<out>/<table>.md|csv|tex``, the claims table, Figure 3 (the
learned schedule's step × layer sparsity) and a sample grid per comparison, and ``<out>/README.md`` with the
command, the time it took on this machine and the claims. Tables without an analogue are written with the
published numbers and the reason.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from dsbench import claims, experiment, machine, quickstart, report, runner
from dsbench.reference_results import KEEPS, TABLES
from dsbench.store import Store
from dsbench.training import compare, train_file

log = logging.getLogger("dsbench.reproduce")
ROOT = Path(__file__).resolve().parent.parent
# the training files whose entries the analogues' schedules come from (`dsbench train diffsparse FILE`)
TRAINING_FILES = (
    "experiments/train_paper.yaml",
    "experiments/train_ablations_shapes.yaml",
    "experiments/train_ablations_seeds.yaml",
)
# schedules written by the search comparison, not by a training file: (folder, the command that writes it)
COMPARE = (
    "results/diffsparse/shapes-pixart/compare",
    [
        "--model",
        "shapes-pixart",
        "--minutes",
        "10",
        "--threads",
        "2",
        "--out",
        "results/diffsparse/shapes-pixart/compare",
    ],
)
COMPARE_MINUTES = 30  # its three arms at --minutes 10
FORMATS = ("md", "csv", "tex")
OTHERS = "others"  # the other seed papers' claims (KEEPS), selectable like a table
CHOICES = (*TABLES, OTHERS)


def selected(only: str | None) -> list[str]:
    """The tables (and ``others``) of ``--only`` (comma-separated), in the paper's order; all by default."""
    if not only:
        return list(CHOICES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHOICES]
    if unknown or not names:
        raise ValueError(f"--only: unknown table {unknown[0] if unknown else only!r}; allowed: {', '.join(CHOICES)}")
    return [t for t in CHOICES if t in names]


def _experiment_names(tables: list[str]) -> list[str]:
    names = [TABLES[t].analogue.experiment for t in tables if t in TABLES and TABLES[t].analogue]
    names += [k.experiment for k in KEEPS] if OTHERS in tables else []
    return list(dict.fromkeys(names))


def _schedules(exp: experiment.Experiment) -> list[str]:
    return [str(e.params["schedule"]) for e in exp.method_entries() if e.name == "diffsparse"]


def _training_entries() -> dict[str, tuple[str, float | None]]:
    """schedule.json path → (the training file that trains it, its minutes budget)."""
    found = {}
    for path in TRAINING_FILES:
        _, entries = train_file.load(ROOT / path)
        for entry, _ in entries:
            found[str(Path(entry.out) / "schedule.json")] = (path, entry.minutes)
    return found


def plan(tables: list[str]) -> dict:
    """What the reproduction needs, checked before any work: the experiments, and for each schedule they read
    whether it is there or which training file (or the search comparison) writes it."""
    experiments = {name: experiment.load(ROOT / "experiments" / f"{name}.yaml") for name in _experiment_names(tables)}
    trainable = _training_entries()
    present, to_train, compare = [], {}, False
    for exp in experiments.values():
        for schedule in _schedules(exp):
            if Path(schedule).exists():  # relative to the repository root, as in the experiment files
                present.append(schedule)
            elif schedule in trainable:
                outs = to_train.setdefault(trainable[schedule][0], [])
                outs += [] if str(Path(schedule).parent) in outs else [str(Path(schedule).parent)]
            elif schedule.startswith(COMPARE[0]):
                compare = True
            else:
                raise ValueError(
                    f"schedule {schedule} (experiment {exp.name}) is not there and no training file "
                    f"of {', '.join(TRAINING_FILES)} writes it"
                )
    budgets = {s: trainable[s][1] or 0 for s in present if s in trainable}  # their training files' minutes
    return {
        "experiments": experiments,
        "present": sorted(set(present)),
        "to_train": to_train,
        "compare": compare,
        "present_budgets": budgets,
    }


def train_missing(needs: dict) -> list[str]:
    """Train every missing schedule (the search comparison's three arms if one of them is missing)."""
    trained = []
    for path, outs in needs["to_train"].items():
        log.info("training %d schedule(s) of %s", len(outs), path)
        train_file.run(ROOT / path, only=outs)
        trained += outs
    if needs["compare"]:
        log.info("running the search comparison: python -m dsbench.training.compare %s", " ".join(COMPARE[1]))
        compare.main(COMPARE[1])
        trained.append(COMPARE[0])
    return trained


def write_tables(frame, tables: list[str], out: Path) -> list[str]:
    """Each table in every format, and the claims table; → the files written."""
    written = []
    for table in (t for t in tables if t in TABLES):
        for fmt in FORMATS:
            report.write(report.paper_table(frame, table), fmt, out / f"{table}.{fmt}")
        written.append(f"{table}.md")
    for fmt in FORMATS:
        report.write(claims.claims(frame, tables), fmt, out / f"claims.{fmt}")
    return written


def write_figures(frame, tables: list[str], out: Path) -> list[Path]:
    """Figure 3: the sparsity map of Table 1's learned schedule; per analogue experiment a sample grid of its
    runs (teacher above each method: the paper's Figures 2, 4 and 5 compare samples the same way)."""
    figures = []
    if "table1" in tables:
        runs = frame[(frame["experiment"] == "paper_table1") & (frame["method"] == "diffsparse")]
        r43 = runs[[str((p or {}).get("schedule", "")).endswith("/r43/schedule.json") for p in runs["params"]]]
        if not r43.empty:
            paths = report.heatmaps(r43.head(1), out / "figures")
            if paths:
                figures.append(paths[0].rename(out / "figures" / "figure3_sparsity.png"))
    for name in _experiment_names(tables):
        runs = frame[(frame["experiment"] == name) & (frame["seed"] == 0)]
        if name == "paper_ablations":  # the training seed 1 schedules only: one panel per variant
            runs = runs[["/seeds/" not in str((p or {}).get("schedule", "")) for p in runs["params"]]]
        if not runs.empty:
            path = out / "figures" / f"samples_{name}.png"
            quickstart.sample_grid(runs, path)
            figures.append(path)
    return figures


def _record_time(out: Path, entry: dict) -> list[dict]:
    """Append this invocation to ``<out>/timing.json`` (an interrupted one too): a resumed reproduction's cost
    is the sum of its invocations."""
    path = out / "timing.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return entries


def readme(frame, tables: list[str], needs: dict, timing: list[dict]) -> str:
    """The reproduction's front page: commands and time on this machine, what was trained, tables, claims."""
    claims_md = report.write(claims.claims(frame, tables), "md")
    wall, cpu = (sum(e[k] for e in timing) / 60 for k in ("wall_s", "cpu_s"))
    compare_minutes = 0 if needs["compare"] or any(COMPARE[0] in e["trained"] for e in timing) else COMPARE_MINUTES
    trained = {out for e in timing for out in e["trained"]}  # their time is in the table already
    before = {s: m for s, m in needs["present_budgets"].items() if str(Path(s).parent) not in trained}
    training = sum(before.values()) + compare_minutes
    lines = [
        "# The DiffSparse paper on the embedded models",
        "",
        f"Made by `dsbench reproduce` (from the repository root) in {wall:.1f} min wall, {cpu:.1f} min CPU over "
        f"{len(timing)} invocation{'s' if len(timing) != 1 else ''}:",
        "",
        "| command | machine | wall (min) | CPU (min) | runs measured | schedules trained |",
        "|---|---|---|---|---|---|",
        *(
            f"| `{e['command']}` | {e['machine']} | {e['wall_s'] / 60:.1f} | {e['cpu_s'] / 60:.1f} "
            f"| {e['runs_measured']} | {', '.join(e['trained']) or '—'} |"
            for e in timing
        ),
        "",
        f"Schedules that were already trained (committed, not by these invocations): {len(before)}; their "
        f"training files budget {sum(before.values()):.0f} min of training for them, and the search comparison's "
        f"three arms {compare_minutes} min: a reproduction from an empty checkout adds about {training:.0f} min of "
        f"training to the time above (≈ {wall + training:.0f} min in all on this machine).",
        "",
        "The paper's models (PixArt-α, DiT-XL/2, Wan2.1, FLUX.1) need a GPU and the hub; each table here puts the "
        "published numbers beside the same comparison on the embedded model of the same family "
        "(shapes-pixart, mnist-dit), quality measured against the uncached model (LPIPS, PSNR, FID on the "
        "model's own domain features), MACs as a ratio to it. `dsbench table --layout <table> --store "
        "results/paper/dsbench.db` prints any of them again.",
        "",
        "## Tables",
        "",
        *(
            f"- [{TABLES[t].id}]({t}.md): {TABLES[t].title}"
            f"{'' if TABLES[t].analogue else f' — published numbers only: {TABLES[t].no_analogue}'}"
            for t in tables
            if t in TABLES
        ),
        "",
        "## Claims",
        "",
        claims_md,
        "",
        "## Figures",
        "",
        "- `figures/figure3_sparsity.png`: the learned schedule of Table 1 (R = 43 %) as step × layer sparsity, "
        "the scale of the paper's Figure 3.",
        "- `figures/samples_<experiment>.png`: every method's samples under the uncached model's, as the paper's "
        "Figures 2, 4 and 5 compare them.",
    ]
    return "\n".join(lines) + "\n"


def main(only: str | None = None, out: str | Path = "results/paper", *, wandb: bool = False) -> int:
    tables = selected(only)
    if Path.cwd().resolve() != ROOT:
        raise ValueError(
            f"run dsbench reproduce from the repository root ({ROOT}): its experiment and training "
            "files name schedules relative to it"
        )
    out = Path(out)
    runner.check_writable(out, "--out")
    needs = plan(tables)  # every file validated, every schedule accounted for, before any work
    command = "dsbench reproduce" + (f" --only {only}" if only else "")
    start, cpu = time.perf_counter(), time.process_time()
    trained, measured, outcomes = [], 0, []
    store = out / "dsbench.db"
    experiments = list(needs["experiments"].values())
    try:
        trained = train_missing(needs)
        for j, exp in enumerate(experiments, 1):
            log.info("experiment %d/%d: %s", j, len(experiments), exp.name)
            outcome, _ = quickstart.execute(exp, store, wandb=wandb, artifacts=out / "artifacts", summary=False)
            outcomes.append(outcome)
            measured += len(outcome.stored)
    finally:  # an interrupted invocation's time counts too
        timing = _record_time(
            out,
            {
                "command": command,
                "machine": machine.describe(),
                "wall_s": round(time.perf_counter() - start, 1),
                "cpu_s": round(time.process_time() - cpu, 1),
                "runs_measured": measured,
                "trained": trained,
            },
        )
    frame = Store(store).frame()
    written = write_tables(frame, tables, out)
    figures = write_figures(frame, tables, out)
    (out / "README.md").write_text(readme(frame, tables, needs, timing))
    print(report.write(claims.claims(frame, tables), "md"))
    print(
        f"\nwrote {out}/: README.md, {', '.join(written)}, claims.md, {len(figures)} figures "
        f"({timing[-1]['wall_s'] / 60:.1f} min on {machine.describe()})"
    )
    print(
        quickstart.closing_summary(
            "dsbench reproduce",
            outcomes,
            store,
            wandb_dir=out if wandb else None,
            outputs=out,
            written=f"README.md, {len(written)} tables, claims.md, figures/ ({len(figures)})"
            + (f"; schedules trained now: {', '.join(trained)}" if trained else ""),
            elapsed=timing[-1]["wall_s"],
        )
    )
    return 0
