"""VBench (docs/evaluation.md#metrics) as an optional extra in its own Python environment.

``vbench`` 0.1.5 pins transformers 4.33 and numpy < 2, so it cannot share an environment with current
diffusers. Set it up once and point ``DSBENCH_VBENCH_PYTHON`` at that interpreter::

    python3.10 -m venv ~/.venvs/vbench
    ~/.venvs/vbench/bin/pip install vbench==0.1.5 torch torchvision opencv-python   # + detectron2 for
    export DSBENCH_VBENCH_PYTHON=~/.venvs/vbench/bin/python                        # object_class etc.

:func:`run_vbench` saves the videos' frames losslessly (``.npy``), then runs a short script in that
interpreter which encodes them as ``{prompt}-{index}.mp4`` (VBench's naming; 8 fps) and calls VBench's
Python API (its ``vbench evaluate`` CLI only wraps the same call in ``torch.distributed.run``). The
aggregation (:func:`aggregate`) is VBench's own leaderboard rule and runs here without VBench.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from dsbench.metrics.errors import MetricUnavailable

ENV = "DSBENCH_VBENCH_PYTHON"
QUALITY = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)
SEMANTIC = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
DIMENSIONS = QUALITY + SEMANTIC
# VBench's min–max normalisation (scripts/constant.py); every other dimension spans [0, 1]
NORMALIZE = {d: (0.0, 1.0) for d in DIMENSIONS} | {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
WEIGHTS = {d: 1.0 for d in DIMENSIONS} | {"dynamic_degree": 0.5}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4, 1

SETUP = (
    f"set {ENV} to the python of a separate environment with vbench 0.1.5 (it pins transformers 4.33 and "
    "numpy<2, so it cannot live beside diffusers): python3.10 -m venv ~/.venvs/vbench && "
    "~/.venvs/vbench/bin/pip install vbench==0.1.5 torch torchvision opencv-python && "
    f"export {ENV}=~/.venvs/vbench/bin/python (see harness/metrics/video.py)"
)

# runs in the VBench interpreter: argv[1] is the job file written by run_vbench
_RUNNER = r"""
import json, os, sys
import cv2, numpy as np
from vbench import VBench
job = json.load(open(sys.argv[1]))
os.makedirs(job["videos"], exist_ok=True)
for item in job["items"]:
    frames = np.load(item["frames"])
    h, w = frames.shape[1:3]
    path = os.path.join(job["videos"], item["name"])
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), job["fps"], (w, h))
    for frame in frames:
        out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out.release()
bench = VBench(job["device"], job["full_info"], job["results"])
bench.evaluate(videos_path=job["videos"], name="dsbench", dimension_list=job["dimensions"], mode=job["mode"])
"""


def aggregate(scores: dict[str, float]) -> dict[str, float]:
    """VBench Quality / Semantic / Total from the 16 raw dimension scores (fractions, as VBench writes them).

    Each dimension is min–max normalised, dynamic degree weighted 0.5, Quality and Semantic are weighted
    means of their groups and Total = (4·Quality + Semantic)/5; the unweighted mean of the raw scores is
    reported too (docs/evaluation.md#metrics).
    """
    missing = [d for d in DIMENSIONS if d not in scores]
    if missing:
        raise ValueError(f"VBench aggregation needs all 16 dimensions; missing: {', '.join(missing)}")
    norm = {d: (scores[d] - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0]) * WEIGHTS[d] for d in DIMENSIONS}
    quality = sum(norm[d] for d in QUALITY) / sum(WEIGHTS[d] for d in QUALITY)
    semantic = sum(norm[d] for d in SEMANTIC) / sum(WEIGHTS[d] for d in SEMANTIC)
    total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {f"vbench_{d}": float(scores[d]) for d in DIMENSIONS} | {
        "vbench_quality": quality,
        "vbench_semantic": semantic,
        "vbench_total": total,
        "vbench_raw_mean": sum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS),
    }


def vbench_python(python: str | None = None) -> str:
    """The VBench interpreter (``python`` or $DSBENCH_VBENCH_PYTHON), checked to import vbench and cv2."""
    python = python or os.environ.get(ENV)
    if not python:
        raise MetricUnavailable(f"VBench is not set up: {SETUP}")
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        raise MetricUnavailable(f"the VBench interpreter {python!r} ({ENV}) is not an executable file; {SETUP}")
    probe = subprocess.run([python, "-c", "import vbench, cv2"], capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        raise MetricUnavailable(f"{python} cannot import vbench and cv2 ({last}); {SETUP}")
    return python


def run_vbench(
    videos,
    prompts: list[str],
    workdir: str | Path,
    *,
    dimensions=DIMENSIONS,
    mode: str = "vbench_standard",
    indices: list[int] | None = None,
    device: str = "cuda",
    fps: int = 8,
    python: str | None = None,
    full_info: str | None = None,
) -> dict[str, float]:
    """Score uint8 videos (N×T×3×H×W, or a list of T×3×H×W) with VBench in its own interpreter.

    Video i is named ``{prompts[i]}-{indices[i]}.mp4``; by default the index counts repeats of a prompt
    (0–4 for the five seeds of the protocol). Returns ``vbench_<dimension>`` for each dimension scored,
    and the aggregates when all 16 are. ``full_info`` defaults to VBench's own prompt list.
    """
    python = vbench_python(python)
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimensions {unknown}; allowed: {', '.join(DIMENSIONS)}")
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    if indices is None:
        counts: dict[str, int] = {}
        indices = []
        for prompt in prompts:
            indices.append(counts.get(prompt, 0))
            counts[prompt] = indices[-1] + 1
    workdir = Path(workdir)
    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    items = []
    for i, (video, prompt, index) in enumerate(zip(videos, prompts, indices, strict=True)):
        if "/" in prompt or os.sep in prompt:
            raise ValueError(f"prompt {prompt!r} cannot name a video file (VBench names videos by prompt)")
        if not (
            isinstance(video, torch.Tensor) and video.dtype == torch.uint8 and video.dim() == 4 and video.shape[1] == 3
        ):
            raise ValueError(f"video {i} must be a uint8 tensor T×3×H×W")
        frames = workdir / "frames" / f"{i:06d}.npy"
        np.save(frames, video.permute(0, 2, 3, 1).contiguous().cpu().numpy())
        items.append({"frames": str(frames), "name": f"{prompt}-{index}.mp4"})
    job = {
        "items": items,
        "videos": str(workdir / "videos"),
        "results": str(workdir / "results"),
        "fps": fps,
        "device": device,
        "dimensions": list(dimensions),
        "mode": mode,
        "full_info": full_info or _default_full_info(python),
    }
    (workdir / "job.json").write_text(json.dumps(job))
    run = subprocess.run([python, "-c", _RUNNER, str(workdir / "job.json")], capture_output=True, text=True)
    if run.returncode:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"VBench failed (exit {run.returncode}; log below, job in {workdir}):\n{tail}")
    results = json.loads((workdir / "results" / "dsbench_eval_results.json").read_text())
    scores = {d: float(results[d][0]) for d in dimensions}
    if set(scores) == set(DIMENSIONS):
        return aggregate(scores)
    return {f"vbench_{d}": s for d, s in scores.items()}


def _default_full_info(python: str) -> str:
    """VBench_full_info.json as installed in the VBench environment (the official 946-prompt list)."""
    run = subprocess.run(
        [
            python,
            "-c",
            "import os, vbench; print(os.path.join(os.path.dirname(vbench.__file__), 'VBench_full_info.json'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.strip()
