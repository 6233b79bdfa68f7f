"""Is an embedded model's FID meaningful? FID(real, real) must sit far below FID(real, generated).

    python -m dsbench.models.fid_check mnist-dit -n 500

Draws 2n real images of the model's domain (two disjoint halves, A and B) and n generated ones
(balanced evaluation conditions, the bundle's sampler), and reports FID/KID of A vs B and of A vs
generated, with the domain feature extractor and with the FID Inception (where its weights are
installed: ``dsbench weights install``). Results go to ``results/models/<name>/fid.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dsbench import metrics
from dsbench.metrics import distribution
from dsbench.models import zoo

RESULTS = Path(__file__).resolve().parents[2] / "results" / "models"


def fid_check(name: str, n: int = 500, seed: int = 0) -> dict:
    bundle = zoo.load(name)
    if bundle.references is None:
        raise ValueError(f"{name} has no reference images here; the FID check needs them")
    real = bundle.references(2 * n, seed)
    real_a, real_b = real[:n], real[n:]
    t0 = time.time()
    generated = bundle.sample(bundle.conditions(n, seed), seed=seed)
    sample_seconds = time.time() - t0
    extractors = [bundle.feature_extractor]
    try:
        distribution.check_inception()
        extractors.append(distribution.INCEPTION)
    except metrics.MetricUnavailable as err:
        print(f"skipping the Inception FID: {err}", file=sys.stderr)
    rows = {}
    for extractor in extractors:
        # Inception's 2048-d pool features are rank-deficient below 2048 images: use its 768-d layer here
        layer = "768" if extractor == distribution.INCEPTION and n < 2048 else None
        options = dict(bundle=bundle, metrics=("fid", "kid"), feature_extractor=extractor, feature_layer=layer)
        rows[extractor] = {
            "real_vs_real": metrics.compute(real_b, references=real_a, **options),
            "real_vs_generated": metrics.compute(generated, references=real_a, **options),
            "feature_layer": layer or "default",
        }
    return {
        "model": name,
        "n": n,
        "seed": seed,
        "sampler": vars(bundle.sampler),
        "sample_seconds": round(sample_seconds, 1),
        "extractors": rows,
    }


def write(result: dict, out_dir: Path, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fid.json").write_text(json.dumps(result, indent=2) + "\n")
    s = result["sampler"]
    lines = [
        f"# {result['model']}: FID of real vs real and real vs generated",
        "",
        f"`{command}`",
        "",
        f"{result['n']} real images (set A) vs {result['n']} other real images (set B) and vs {result['n']} "
        f"generated images (balanced conditions, seed {result['seed']}, {s['scheduler']} {s['steps']} steps, "
        f"CFG {s['guidance_scale']}).",
        "",
        "| features | FID real A vs real B | FID real A vs generated | KID real vs real | KID real vs generated |",
        "|---|---|---|---|---|",
    ]
    for extractor, row in result["extractors"].items():
        rr, rg = row["real_vs_real"], row["real_vs_generated"]
        label = extractor + ("" if row["feature_layer"] == "default" else f" (layer {row['feature_layer']})")
        lines.append(f"| {label} | {rr['fid']:.3f} | {rg['fid']:.3f} | {rr['kid_mean']:.4f} | {rg['kid_mean']:.4f} |")
    (out_dir / "fid.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsbench.models.fid_check", description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=zoo.available("embedded"))
    parser.add_argument("-n", type=int, default=500, help="images per set (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("-n must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = fid_check(args.model, args.n, args.seed)
    command = "python -m dsbench.models.fid_check " + " ".join(sys.argv[1:] if argv is None else argv)
    write(result, args.out_dir or RESULTS / args.model, command)
    print(json.dumps(result["extractors"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
