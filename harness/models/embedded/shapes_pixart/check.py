"""``shapes-pixart``'s checks: a captioned sample grid and the attribute accuracy of generated scenes."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from dsbench.data import shapes as S
from dsbench.models.embedded.common import (
    atomic_text,
)
from dsbench.models.embedded.shapes_pixart.data import (
    EVAL_SEED,
    RESOLUTION,
    conditions,
)
from dsbench.models.embedded.shapes_pixart.model import (
    NAME,
    RESULTS,
    SAMPLER,
    attribute_scores,
    classifier_accuracy,
    load,
)


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, width: int = 34) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def save_caption_grid(
    rows: list[tuple[str, torch.Tensor]], path: Path, scale: int = 3, real: torch.Tensor | None = None, title: str = ""
) -> None:
    """One row per caption: the caption, (a real scene of it,) then its samples; uint8 images 3×H×W."""
    from PIL import Image, ImageDraw

    side = RESOLUTION * scale
    pad, text_w, head = 6, 300, 40
    ncol = max(len(imgs) for _, imgs in rows)
    extra = side + 3 * pad if real is not None else 0
    W = text_w + extra + ncol * (side + pad) + pad
    H = head + len(rows) * (side + pad) + pad
    canvas = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(13)
    draw.text((pad, 8), title, fill=(0, 0, 0), font=font)
    if real is not None:
        draw.text((text_w, head - 16), "real", fill=(90, 90, 90), font=small)
    draw.text((text_w + extra, head - 16), "generated (one seed per column)", fill=(90, 90, 90), font=small)

    def paste(img: torch.Tensor, x: int, y: int):
        a = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(a), (x, y))

    for r, (cap, imgs) in enumerate(rows):
        y = head + r * (side + pad)
        draw.multiline_text((pad, y + 4), _wrap(cap), fill=(0, 0, 0), font=small, spacing=3)
        if real is not None:
            paste(real[r], text_w, y)
        for c, img in enumerate(imgs):
            paste(img, text_w + extra + c * (side + pad), y)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)


def grid(
    out: Path = RESULTS / "samples.png",
    rows: int = 8,
    per_caption: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    weights: Path | None = None,
) -> dict:
    """Rows = held-out captions (half one-object, half two-object scenes), columns = seeds."""
    bundle = load(weights=weights)
    descs = S.sample_descriptions(400, seed + 77, split="heldout")
    singles = [d for d in descs if len(d) == 1][: rows // 2]
    pairs = [d for d in descs if len(d) == 2][: rows - len(singles)]
    chosen = [d for pair in zip(singles, pairs) for d in pair] + singles[len(pairs) :] + pairs[len(singles) :]
    captions = [S.caption(d) for d in chosen]
    conds = [c for c in captions for _ in range(per_caption)]
    # column j of every row uses the same seed (the per-image generator index j)
    t0 = time.perf_counter()
    images = torch.cat(
        [bundle.sample([c] * per_caption, seed, steps=steps, guidance_scale=guidance_scale) for c in captions]
    )
    seconds = time.perf_counter() - t0
    real = torch.from_numpy(S.render(chosen, seed, RESOLUTION))
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    save_caption_grid(
        [(c, images[i * per_caption : (i + 1) * per_caption]) for i, c in enumerate(captions)],
        Path(out),
        real=real,
        title=f"{NAME}: held-out captions, DPM-Solver++ {steps or SAMPLER.steps} steps, CFG {g}",
    )
    acc = bundle.alignment(images, conds)
    info = {
        "path": str(out),
        "images": len(conds),
        "seconds": round(seconds, 2),
        **acc,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": g,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info))
    return info


def check(
    n: int = 320,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    sweep: list[float] | None = None,
    threshold: float = 0.90,
    out_dir: Path = RESULTS,
    weights: Path | None = None,
    write: bool = True,
) -> dict:
    """Attribute accuracy by the domain classifier on ``n`` images generated from held-out captions."""
    bundle = load(weights=weights)
    conds = conditions(n, seed)
    scenes = [S.parse_caption(c) for c in conds]
    steps = steps or SAMPLER.steps
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    bundle.sample(conds[:4], seed, steps=2)  # warm-up
    t0 = time.perf_counter()
    images = bundle.sample(conds, seed, steps=steps, guidance_scale=g)
    seconds = time.perf_counter() - t0
    scores = bundle.alignment(images, conds)
    n_obj = [len(s) for s in scenes]
    by_count = {
        f"{k}_object": attribute_scores(
            bundle.classifier.predict(images[[i for i, m in enumerate(n_obj) if m == k]]),
            [s for s in scenes if len(s) == k],
        )["attribute_accuracy"]
        for k in (1, 2)
    }
    real = S.sample_scenes(n, EVAL_SEED, split="heldout", resolution=RESOLUTION)
    real_scores = classifier_accuracy(bundle.classifier, real)
    sweep_rows = []
    for gs in sweep or []:
        t1 = time.perf_counter()
        imgs = bundle.sample(conds, seed, steps=steps, guidance_scale=gs)
        sweep_rows.append(
            {
                "guidance_scale": gs,
                "steps": steps,
                "seconds": round(time.perf_counter() - t1, 2),
                **bundle.alignment(imgs, conds),
            }
        )
        print(json.dumps(sweep_rows[-1]))
    acc = scores["attribute_accuracy"]
    result = {
        "model": NAME,
        "n": n,
        "seed": seed,
        "captions": "held-out (dsbench.data.shapes split 'heldout')",
        "scheduler": SAMPLER.scheduler,
        "steps": steps,
        "guidance_scale": g,
        **scores,
        "attribute_accuracy_by_objects": by_count,
        "threshold": threshold,
        "passed": acc >= threshold,
        "classifier_on_real_heldout_scenes": real_scores,
        "sweep": sweep_rows,
        "seconds": round(seconds, 2),
        "seconds_per_64_images": round(seconds / n * 64, 2),
        "threads": torch.get_num_threads(),
        "dtype": str(bundle.pipeline.transformer.dtype),
        "torch": torch.__version__,
        "command": "python -m dsbench.models.embedded.shapes_pixart " + shlex.join(sys.argv[1:]) if write else None,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_text(out_dir / "check.json", json.dumps(result, indent=2) + "\n")
        attrs = ("attribute", "shape", "colour", "size", "position", "layout", "scene")
        rows = "\n".join(f"| {a} | {scores[a + '_accuracy']:.3f} | {real_scores[a + '_accuracy']:.3f} |" for a in attrs)
        sweep_md = ""
        if sweep_rows:
            sweep_md = (
                "\n\nGuidance sweep (same captions and seeds):\n\n| CFG | attribute | shape | colour | size | "
                "position | layout | scene |\n|---|---|---|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {r['guidance_scale']} | " + " | ".join(f"{r[a + '_accuracy']:.3f}" for a in attrs) + " |"
                    for r in sweep_rows
                )
            )
        atomic_text(
            out_dir / "check.md",
            f"""# {NAME}: attribute accuracy of generated scenes

`{result["command"]}`

{n} images generated from held-out captions (scene combinations never seen in training; seed {seed}),
DPM-Solver++ {steps} steps, classifier-free guidance {g}, read by the domain classifier (per position slot:
shape or empty, colour, size). Per object of a caption: position (its slot is occupied), shape, colour, size;
attribute accuracy = their mean. Per image: layout (exactly the caption's slots occupied), scene (all right).

**Attribute accuracy: {acc:.3f}** (required ≥ {threshold}: {"passed" if result["passed"] else "FAILED"}) —
one-object captions {by_count["1_object"]:.3f}, two-object captions {by_count["2_object"]:.3f}.

| accuracy | generated | real held-out scenes |
|---|---|---|
{rows}{sweep_md}

Sampling: {result["seconds"]} s for {n} images ({result["seconds_per_64_images"]} s per 64 images,
{result["threads"]} threads, {result["dtype"]}, batches of 64 with CFG).

Samples: [samples.png](samples.png) (rows = held-out captions, first column a real scene of the caption).
""",
        )
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=2))
    return result
