"""``python -m dsbench.models.embedded.mnist_dit train|grid|check``: the command line of the embedded DiT."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from dsbench.models.embedded.mnist_dit import __doc__ as DOC
from dsbench.models.embedded.mnist_dit.check import check, grid
from dsbench.models.embedded.mnist_dit.model import RESULTS, WEIGHTS
from dsbench.models.embedded.mnist_dit.train import train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m dsbench.models.embedded.mnist_dit", description=DOC.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the VAE, the classifier and the DiT")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument(
        "--only",
        action="append",
        choices=["vae", "classifier", "dit"],
        help="train only these phases (repeatable); default: all, in order",
    )
    p.add_argument("--vae-steps", type=int, default=400)
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--dit-steps", type=int, default=2000)
    p.add_argument("--dit-batch-size", type=int, default=128)
    p.add_argument("--dit-minutes", type=float, default=None, help="stop the DiT early after this many minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-resume", action="store_true", help="ignore the DiT checkpoint in ~/.cache/dsbench/train")
    for name, helptext in (
        ("grid", "write results/models/mnist-dit/samples.png"),
        ("check", "class accuracy of generated digits → results/models/mnist-dit/check.{json,md}"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance-scale", type=float, default=None)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--weights", type=Path, default=None)
        if name == "grid":
            q.add_argument("--out", type=Path, default=RESULTS / "samples.png")
            q.add_argument("--per-class", type=int, default=8)
        else:
            q.add_argument("-n", type=int, default=500)
            q.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train_command.txt", "a") as f:
            f.write(
                f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
                f"python -m dsbench.models.embedded.mnist_dit {shlex.join(argv)}\n"
            )
        train(
            out,
            phases=tuple(args.only or ("vae", "classifier", "dit")),
            vae_steps=args.vae_steps,
            classifier_steps=args.classifier_steps,
            dit_steps=args.dit_steps,
            dit_batch_size=args.dit_batch_size,
            dit_minutes=args.dit_minutes,
            seed=args.seed,
            resume=not args.no_resume,
            threads=args.threads,
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "grid":
        grid(
            args.out,
            per_class=args.per_class,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            weights=args.weights,
        )
        return 0
    result = check(
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        weights=args.weights,
        write=not args.no_write,
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
