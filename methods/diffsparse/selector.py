"""The DiffSparse token selector (Eq. 5/10): S = B(λ1·s1 + λ2·s2 + λ3·s3), top-k.

See docs/methods/diffsparse.md#token-selector.

Built on the shared score library (``dsbench.scores.ScoreSpec``); this module only holds the
per-model λ of the paper's A.5.1 and the ablation switches, so the training forward and
inference rank tokens with the very same spec.
"""

from __future__ import annotations

from collections.abc import Iterable

from dsbench.scores import ScoreSpec

STALENESS = 0.25 / 3  # the literal λ3 of DiffSparse A.5.1 for every model

# family → (λ1 s1, λ2 s2, λ4 bonus, bonus grid k) [P A.5.1]; Wan uses the V-norm score instead [P]
LAMBDAS = {
    "pixart": (0.0, 1.0, 0.4, 4),
    "dit": (1.0, 0.0, 0.6, 2),
    "flux": (0.0, 1.0, 0.4, 4),  # s2 = text-key entropy of the joint attention [PD]
    "wan": (0.0, 0.0, 0.0, 1),
}
IMPORTANCES = ("attention", "similarity", "norm")
TERMS = ("s1", "s2", "s3", "B")


def selector_spec(
    family: str,
    *,
    importance: str = "attention",
    drop: Iterable[str] = (),
    cfg_selection: str | None = None,
    pixart_lambda1: float | None = None,
) -> ScoreSpec:
    """The ScoreSpec of the DiffSparse selector for a model family.

    importance: attention (the model's attention score; V-norm on Wan), similarity or norm
      [P Table 5]; the alternatives replace λ1·s1 + λ2·s2, keeping s3 and the bonus.
    drop: score terms removed by zero weight, any of s1, s2, s3, B [P Table 10].
    cfg_selection: per_half (DiT default, as ToCa-DiT) or shared (others) (docs/concepts.md#classifier-free-guidance).
    pixart_lambda1: λ1 on PixArt (default 0 per A.5.1; 1.0 tests Table 10's −s1 variant).
    """
    if family not in LAMBDAS:
        raise ValueError(f"family must be one of {sorted(LAMBDAS)}, got {family!r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    drop = set(drop)
    if not drop <= set(TERMS):
        raise ValueError(f"drop must be a subset of {TERMS}, got {sorted(drop)}")
    l1, l2, bonus, grid = LAMBDAS[family]
    if family == "pixart" and pixart_lambda1 is not None:
        l1 = pixart_lambda1
    if importance == "attention" and family == "wan":
        importance = "vnorm"
    return ScoreSpec(
        attention_received=0.0 if "s1" in drop else l1,
        cross_entropy=0.0 if "s2" in drop else l2,
        staleness=0.0 if "s3" in drop else STALENESS,
        bonus=0.0 if "B" in drop else bonus,
        bonus_grid=grid,
        importance=importance,
        cfg_selection=cfg_selection or ("per_half" if family == "dit" else "shared"),
    )
