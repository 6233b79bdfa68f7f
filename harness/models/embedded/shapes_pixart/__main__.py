"""``python -m dsbench.models.embedded.shapes_pixart train|grid|check``: the command line of the embedded
PixArt-α."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from dsbench.models.embedded.shapes_pixart import __doc__ as DOC
from dsbench.models.embedded.shapes_pixart.check import check, grid
from dsbench.models.embedded.shapes_pixart.model import (
    NAME,
    RESULTS,
    WEIGHTS,
)
from dsbench.models.embedded.shapes_pixart.train import PHASES, train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m dsbench.models.embedded.shapes_pixart", description=DOC.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the classifier, the VAE and the transformer")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument(
        "--only",
        action="append",
        choices=list(PHASES),
        help="train only these phases (repeatable); default: all, in order",
    )
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--transformer-steps", type=int, default=None)
    p.add_argument("--transformer-batch-size", type=int, default=None)
    p.add_argument("--transformer-lr", type=float, default=None)
    p.add_argument("--transformer-minutes", type=float, default=None, help="stop the transformer after this long")
    p.add_argument(
        "--transformer-init",
        choices=("scratch", "committed"),
        default=None,
        help="start the transformer from scratch (default) or from the weights in --out",
    )
    p.add_argument(
        "--transformer-low-snr-boost",
        action="store_true",
        default=None,
        help="weight noisy timesteps up to 10x (attribute binding is decided there)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    for name, helptext in (
        ("grid", f"write results/models/{NAME}/samples.png"),
        ("check", f"attribute accuracy of generated scenes → results/models/{NAME}/check.{{json,md}}"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance-scale", type=float, default=None)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--weights", type=Path, default=None)
        if name == "grid":
            q.add_argument("--out", type=Path, default=RESULTS / "samples.png")
            q.add_argument("--rows", type=int, default=8)
            q.add_argument("--per-caption", type=int, default=8)
        else:
            q.add_argument("-n", type=int, default=320)
            q.add_argument("--sweep", type=str, default=None, help="also score these guidance scales, e.g. 1.5,3,4.5")
            q.add_argument("--out-dir", type=Path, default=RESULTS)
            q.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        command = "python -m dsbench.models.embedded.shapes_pixart " + shlex.join(argv)
        train(
            args.out,
            phases=tuple(args.only or PHASES),
            threads=args.threads,
            seed=args.seed,
            command=command,
            classifier_steps=args.classifier_steps,
            vae_steps=args.vae_steps,
            transformer_steps=args.transformer_steps,
            transformer_batch_size=args.transformer_batch_size,
            transformer_lr=args.transformer_lr,
            transformer_minutes=args.transformer_minutes,
            transformer_init=args.transformer_init,
            transformer_low_snr_boost=args.transformer_low_snr_boost,
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "grid":
        grid(
            args.out,
            rows=args.rows,
            per_caption=args.per_caption,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            weights=args.weights,
        )
        return 0
    sweep = [float(s) for s in args.sweep.split(",")] if args.sweep else None
    result = check(
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        sweep=sweep,
        out_dir=args.out_dir,
        weights=args.weights,
        write=not args.no_write,
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
