"""Distribution metrics through torch-fidelity: FID, KID, precision/recall, and the Inception Score.

Images stay in memory (a Dataset over a uint8 tensor), torch-fidelity's on-disk feature cache is off (the
inputs have no stable names) and its data loader runs in-process. Real models use the standard
``inception-v3-compat`` extractor; an embedded model's domain classifier is registered with torch-fidelity
under the bundle's ``feature_extractor`` name, so the same code computes FID/KID/PRC on its ``features``
(normalised to norm √D, see ``sphere_features``) and an Inception-Score analogue on its ``logits``.
"""

from __future__ import annotations

import copy
import os

import torch
from torch.utils.data import Dataset

from dsbench import weights

INCEPTION = "inception-v3-compat"
# torch-fidelity's result keys → ours
_KEYS = {
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "inception_score_mean": "is_mean",
    "inception_score_std": "is_std",
}


class ImageDataset(Dataset):
    """A uint8 N×3×H×W tensor as the Dataset torch-fidelity reads (one uint8 3×H×W image per item)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def sphere_features(features: torch.Tensor) -> torch.Tensor:
    """Features L2-normalised and scaled to norm √D. A domain classifier's raw penultimate activations
    reach norms of hundreds; KID's cubic kernel (x·y/D + 1)³ then reaches ~10⁷, where torch-fidelity's
    float32 MMD cancels to noise (real-vs-real KID of −2·10³ was measured). On the sphere the kernel
    stays within [0, 8] and FID compares directions of the features, as cosine-based metrics do."""
    return torch.nn.functional.normalize(features, dim=1) * features.shape[1] ** 0.5


class DomainExtractor:
    """Marks the extractors made by :func:`register_domain_extractor`: those may be re-registered."""


def _domain_class(classifier: torch.nn.Module):
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class Extractor(DomainExtractor, FeatureExtractorBase):
        # torch-fidelity calls the layers by name: "features" for FID/KID/PRC, "logits" for ISC
        source = classifier

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            # a copy: torch-fidelity moves the extractor to its device and sets eval/no-grad on it
            self.classifier = copy.deepcopy(self.source)

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting uint8 images (torch-fidelity's input)")
            out = []
            for layer in self.features_list:
                y = getattr(self.classifier, layer)(x)
                if y.dim() != 2 or len(y) != len(x):
                    raise ValueError(f"the domain classifier's {layer}() must return N×D, got {tuple(y.shape)}")
                y = y.float()
                if layer == "features":
                    y = sphere_features(y)
                out.append(y)
            return tuple(out)

    return Extractor


def register_domain_extractor(name: str, classifier: torch.nn.Module) -> None:
    """Register ``classifier`` (``features``/``logits`` on uint8 N×3×H×W) as torch-fidelity extractor ``name``.

    Registering the same name again replaces an earlier domain extractor (a reloaded bundle brings a new
    classifier object); torch-fidelity's own extractors cannot be replaced. Names are used by torch-fidelity
    in file names, hence its rules: no surrounding blanks, no path separators.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if not isinstance(name, str) or not name or name.strip() != name or os.sep in name or "/" in name:
        raise ValueError(
            f"feature extractor name {name!r} must be a non-empty string without surrounding "
            "blanks or path separators (torch-fidelity uses it in file names)"
        )
    for method in ("features", "logits"):
        if not callable(getattr(classifier, method, None)):
            raise TypeError(
                f"the domain classifier for {name!r} has no {method}() method "
                "(expected features/logits on uint8 N×3×H×W)"
            )
    known = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if known is not None and not issubclass(known, DomainExtractor):
        raise ValueError(f"{name!r} is a torch-fidelity built-in feature extractor; choose another name")
    FEATURE_EXTRACTORS_REGISTRY.pop(name, None)
    register_feature_extractor(name, _domain_class(classifier))


def check_inception() -> None:
    """Install torch-fidelity's FID Inception on first need (MetricUnavailable, one line, where it cannot)."""
    weights.ensure("fid_inception")


def distribution_metrics(
    samples: torch.Tensor,
    references: torch.Tensor | None = None,
    *,
    fid: bool = True,
    kid: bool = True,
    prc: bool = True,
    isc: bool = False,
    feature_extractor: str = INCEPTION,
    device: str = "cpu",
    batch_size: int = 64,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    isc_splits: int | None = None,
    prc_neighborhood: int = 3,
    feature_layer: str | None = None,
    seed: int = 2020,
    resamples: int = 0,
) -> dict[str, float]:
    """FID / KID / precision-recall of ``samples`` against ``references``, and ISC of ``samples``.

    Small sets get subset sizes that fit them: KID subsets of min(1000, N₁, N₂) images, ISC splits of
    min(10, N). ``feature_layer`` picks another layer of the extractor for FID/KID/PRC, e.g. Inception's
    "768" for sets of fewer than 2048 images (pytorch-fid's advice; the 2048-d covariance is rank-deficient
    there, and its eigendecomposition alone takes seconds); values from different layers are not
    comparable. With the offline Inception on this machine ISC is NaN by design (its logits layer is not
    shipped; see harness/weights.py) — use a domain extractor's logits instead.

    ``resamples`` > 0: also ``<metric>_ci_low`` / ``<metric>_ci_high`` for FID, KID and precision/recall — the
    95 % bias-shifted percentile interval over that many bootstrap resamples of the samples (the references
    stay fixed; see :func:`_shifted_interval`),
    computed from features extracted once; at most 20 for features wider than 512 (Inception's 2048-d FID
    needs seconds per resample on a CPU).
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if feature_extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(
            f"feature extractor {feature_extractor!r} is not registered with torch-fidelity "
            "(register a domain classifier with register_domain_extractor)"
        )
    if feature_extractor == INCEPTION:
        check_inception()
    binary = fid or kid or prc
    if binary and references is None:
        raise ValueError("FID/KID/precision/recall need reference images")
    n = len(samples) if references is None else min(len(samples), len(references))
    options = dict(
        input1=ImageDataset(samples),
        input2=ImageDataset(references) if binary else None,
        fid=fid,
        kid=kid,
        prc=prc,
        isc=isc,
        feature_extractor=feature_extractor,
        cuda=torch.device(device).type == "cuda",
        batch_size=batch_size,
        cache=False,
        verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size or min(1000, n),
        isc_splits=isc_splits or min(10, len(samples)),
        prc_neighborhood=prc_neighborhood,
        rng_seed=seed,
        feature_layer_fid=feature_layer,
        feature_layer_kid=feature_layer,
        feature_layer_prc=feature_layer,
    )
    result = torch_fidelity.calculate_metrics(**options)
    out = {_KEYS[k]: float(v) for k, v in result.items() if k in _KEYS}
    if resamples > 0 and binary:
        for name, draws in _bootstrap_draws(options, fid, kid, prc, resamples, seed).items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _shifted_interval(out[name], draws, name)
    return out


def _bootstrap_draws(options: dict, fid: bool, kid: bool, prc: bool, resamples: int, seed: int) -> dict:
    """FID/KID/PRC of resamples of the samples' features (extracted once) against the references."""
    import numpy as np
    from torch_fidelity import metric_fid, metric_kid, metric_prc, utils

    layer = utils.resolve_feature_layer_for_metric("fid", **options)
    extractor = utils.create_feature_extractor(utils.resolve_feature_extractor(**options), [layer], **options)
    samples, references = (utils.extract_featuresdict_from_input_id(i, extractor, **options)[layer] for i in (1, 2))
    if samples.shape[1] > 512:  # Inception's 2048-d FID takes seconds per matrix square root: fewer resamples
        resamples = min(resamples, 20)
    reference_stats = metric_fid.fid_features_to_statistics(references) if fid else None
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = samples[torch.as_tensor(rng.integers(0, len(samples), len(samples)))]
        values = {}
        if fid:
            values |= metric_fid.fid_statistics_to_metric(
                metric_fid.fid_features_to_statistics(picked), reference_stats, False
            )
        if kid:  # 20 subsets per resample: the resamples, not the subsets, carry the interval
            values |= metric_kid.kid_features_to_metric(
                picked, references, **{**options, "kid_subsets": min(options["kid_subsets"], 20)}
            )
        if prc:
            values |= metric_prc.prc_features_to_metric(picked, references, **options)
        for key, value in values.items():
            if key in _KEYS and _KEYS[key] != "kid_std":
                draws.setdefault(_KEYS[key], []).append(float(value))
    return draws


def _shifted_interval(estimate: float, draws: list[float], name: str) -> tuple[float, float]:
    """Percentile interval moved by the bootstrap's bias (mean of the draws − the estimate): a resample repeats
    images, which alone raises FID, so the raw percentiles would sit above the estimate. Clipped to the metric's
    range (FID ≥ 0, precision and recall in [0, 1])."""
    import numpy as np

    bias = float(np.mean(draws)) - estimate
    low, high = (float(v) - bias for v in np.percentile(draws, [2.5, 97.5]))
    floor, ceiling = {"fid": (0.0, np.inf), "precision": (0.0, 1.0), "recall": (0.0, 1.0)}.get(name, (-np.inf, np.inf))
    return float(np.clip(low, floor, ceiling)), float(np.clip(high, floor, ceiling))
