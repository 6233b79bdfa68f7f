"""Learned vs searched schedules at equal wall time (issue 5; docs/methods/diffsparse.md, docs/methods/search.md).

At the MACs of ToCa's default configuration on the model (R = 1 − M_ToCa / M_full), each arm gets
the same ``--minutes`` of wall time from a clean start (teacher images included): DiffSparse
training (exports the best schedule on its validation conditions), the GA and random search (LPIPS
to the teacher on a fixed fitness set). Every schedule, ToCa's default and the ToCa-initialised DP
schedule (before any training) are then evaluated on held-out conditions (evaluation seed 0):
LPIPS (AlexNet) to the uncached model, FID with the model's domain features against real images,
and the executed M_lin ratio.

    python -m dsbench.training.compare --model shapes-pixart --minutes 10

writes ``results/diffsparse/<model>/compare/{table.md,results.json,log.txt,command.txt}`` (and the
arms' own folders ``diffsparse/``, ``ga/``, ``random/`` under it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

import dsbench
from dsbench import methods, stats
from dsbench.metrics import compute
from dsbench.models import zoo
from dsbench.models.embedded.common import Log
from dsbench.training.diffsparse import INIT_FILE, SCHEDULE_FILE, TrainConfig, Trainer, parse_config, task_from_bundle
from dsbench.training.search import run_search
from dsbench.training.train_file import matched_ratio

ROOT = Path(__file__).resolve().parents[2]


def evaluate_all(bundle, candidates: dict[str, object], n: int, log) -> list[dict]:
    """LPIPS (AlexNet) to the teacher, FID (domain features) to ``n`` real images and M_lin ratio of
    each candidate (a method instance) on ``n`` held-out conditions, evaluation seed 0; LPIPS with its 95 %
    bootstrap interval over the images, FID with its bootstrap interval over the sample set."""
    conds = bundle.conditions(n, 0)
    with dsbench.attach(bundle.pipeline, methods.build("full")) as handle:
        teacher = bundle.sample(conds, 0)
        base = handle.report()["macs_cfg_not_counted"]
    references = bundle.references(n) if bundle.references is not None else None
    rows = []
    for label, method in [("uncached model (teacher)", methods.build("full")), *candidates.items()]:
        with dsbench.attach(bundle.pipeline, method) as handle:
            student = bundle.sample(conds, 0)
            macs = handle.report()["macs_cfg_not_counted"]
        lpips = compute(student, teacher=teacher, metrics=("lpips",), lpips_nets=("alex",), per_sample=True)
        row = {
            "schedule": label,
            "macs_ratio": macs / base,
            "lpips_alex": lpips["lpips_alex"],
            "lpips_alex_ci": list(stats.mean_ci(lpips["per_sample"]["lpips_alex"]["values"])),
        }
        if references is not None:
            fid = compute(student, references=references, bundle=bundle, metrics=("fid",), per_sample=True)
            row |= {"fid": fid["fid"], "fid_ci": [fid["fid_ci_low"], fid["fid_ci_high"]]}
        rows.append(row)
        log(f"evaluated {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
    return rows


def _with_interval(value: float, interval: list[float], digits: int) -> str:
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def table(rows: list[dict]) -> str:
    fid = all("fid" in r for r in rows)
    lines = [
        "| schedule | M_lin / full | LPIPS (AlexNet) to teacher ↓ [95 % CI] |"
        + (" FID (domain) ↓ [95 % CI] |" if fid else ""),
        "|---|---|---|" + ("---|" if fid else ""),
    ]
    lines += [
        f"| {r['schedule']} | {r['macs_ratio']:.4f} | {_with_interval(r['lpips_alex'], r['lpips_alex_ci'], 4)} |"
        + (f" {_with_interval(r['fid'], r['fid_ci'], 2)} |" if fid else "")
        for r in rows
    ]
    return "\n".join(lines)


def compare(
    bundle, minutes: float, out: Path, *, config: TrainConfig, eval_n: int, fitness_n: int, seed: int = 0, log=print
) -> list[dict]:
    """Run the three arms for ``minutes`` each and evaluate everything; returns the table rows."""
    out = Path(out)
    ratio = matched_ratio(bundle, methods.build("toca"))
    config = config.model_copy(update={"ratio": ratio})
    log(f"{bundle.name}: ToCa default M_lin ratio {1 - ratio:.4f} → budget R = {ratio:.4f}; {minutes} min per arm")
    for arm in ("diffsparse", "ga", "random"):  # a clean start: no resumed checkpoint or cached teacher
        if (out / arm).exists():
            shutil.rmtree(out / arm)
    seconds = {}
    t0 = time.monotonic()
    trainer = Trainer(task_from_bundle(bundle), config, out / "diffsparse", log, minutes=minutes)
    trainer.train()
    seconds["diffsparse"] = time.monotonic() - t0
    searches = {}
    for arm in ("ga", "random"):
        t0 = time.monotonic()
        result = run_search(
            bundle,
            arm,
            ratio,
            minutes,
            out / arm,
            fitness="lpips",
            fitness_n=fitness_n,
            fitness_seed=config.condition_seed,
            seed=seed,
            space=trainer.space,
            log=log,
        )
        seconds[arm] = time.monotonic() - t0
        searches[arm] = result.evaluations
    candidates = {
        "ToCa (its default configuration)": methods.build("toca"),
        "ToCa-initialised costs, DP at the same MACs (untrained)": methods.build(
            "diffsparse", schedule=str(out / "diffsparse" / INIT_FILE)
        ),
        "DiffSparse (learned)": methods.build("diffsparse", schedule=str(out / "diffsparse" / SCHEDULE_FILE)),
        "GA search": methods.build("diffsparse", schedule=str(out / "ga" / "schedule.json")),
        "random search": methods.build("diffsparse", schedule=str(out / "random" / "schedule.json")),
    }
    rows = evaluate_all(bundle, candidates, eval_n, log)
    validation = out / "diffsparse" / "validation.json"
    (out / "results.json").write_text(
        json.dumps(
            {
                "model": bundle.name,
                "ratio": ratio,
                "minutes_per_arm": minutes,
                "wall_seconds": seconds,
                "search_evaluations": searches,
                "eval_n": eval_n,
                "eval_seed": 0,
                "fitness_n": fitness_n,
                "train_config": config.model_dump(),
                "validation": json.loads(validation.read_text()) if validation.exists() else None,
                "rows": rows,
            },
            indent=1,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsbench.training.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model zoo name with a dit or pixart pipeline")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock minutes per arm (> 0)")
    parser.add_argument("--out", default=None, help="default results/diffsparse/<model>/compare")
    parser.add_argument("--eval-n", type=int, default=64, help="held-out evaluation conditions (>= 2)")
    parser.add_argument("--fitness-n", type=int, default=16, help="fitness conditions of the searches (>= 1)")
    parser.add_argument("--conditions", type=int, default=64, help="training conditions per epoch")
    parser.add_argument("--batch", type=int, default=8, help="training conditions per iteration")
    parser.add_argument("--val-conditions", type=int, default=16, help="validation conditions of the trainer")
    parser.add_argument("--lr-scale", type=float, default=0.03, help="trainer learning-rate and δ scale")
    parser.add_argument("--epochs", type=int, default=1000, help="epochs per stage (the time budget ends it first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the searches")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        raise ValueError(f"--minutes (wall-clock minutes per arm) must be > 0, got {args.minutes}")
    if args.eval_n < 2 or args.fitness_n < 1:
        raise ValueError(f"--eval-n must be >= 2 and --fitness-n >= 1, got {args.eval_n} and {args.fitness_n}")
    # ratio is replaced by ToCa's; 0.5 only passes validation here
    config = parse_config(
        TrainConfig,
        {
            "ratio": 0.5,
            "conditions": args.conditions,
            "batch": args.batch,
            "val_conditions": args.val_conditions,
            "lr_scale": args.lr_scale,
            "epochs": args.epochs,
        },
    )

    torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bundle = zoo.load(args.model)
    out = Path(args.out) if args.out else ROOT / "results" / "diffsparse" / args.model / "compare"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m dsbench.training.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    (out / "command.txt").write_text(command + "\n")
    (out / "log.txt").unlink(missing_ok=True)  # one comparison per log
    log = Log(out / "log.txt")

    rows = compare(
        bundle, args.minutes, out, config=config, eval_n=args.eval_n, fitness_n=args.fitness_n, seed=args.seed, log=log
    )
    result = json.loads((out / "results.json").read_text())
    (out / "table.md").write_text(
        f"# DiffSparse vs search baselines on `{args.model}` at ToCa's default MACs (R = {result['ratio']:.4f})\n\n"
        f"`{command}`: {args.minutes} min of wall time per arm; {args.eval_n} held-out conditions "
        f"(evaluation seed 0). Search evaluations: {result['search_evaluations']}.\n\n{table(rows)}\n"
    )
    log(f"wrote {os.path.relpath(out / 'table.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
