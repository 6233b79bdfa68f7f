"""The published numbers of the DiffSparse paper's Tables 1-10 and of its text (two-stage training, search
baselines), and how our runs line up with them.

Transcribed from the paper (ICLR 2026 submission). This is the only place in the code base that holds
published numbers: ``dsbench.report`` prints them beside the rows it measures from the store. Every table
carries its source label.

A :class:`Row` says which of our runs measure it (``match``: the method name, a subset of its
parameters, the compute budget); a :class:`Column` says which store column holds our value and how it
is scaled to the paper's unit. [PD] The matching rules and column mappings are ours: the paper has no
code. CLIP in the DiffSparse tables is Convention A divided by 100 (docs/evaluation.md#metrics), i.e. our
``clip_score_legacy`` / 100; its single "VBench" number uses an unstated aggregation, which we put
beside our ``vbench_total``. An :class:`Analogue` reruns a table's comparison on the embedded model of its
family, where the paper's FID on 30k COCO captions cannot be computed: quality is measured against the
uncached model and MACs as a ratio to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAPER = "DiffSparse (ICLR 2026 submission)"


@dataclass(frozen=True)
class Column:
    key: str  # key of the published value in Row.published (analogue columns: the CSV name after ours_)
    header: str
    metric: str | None  # store column holding our value (None: nothing we measure)
    scale: float = 1.0  # ours = store value × scale, in the paper's unit
    digits: int = 2
    match: str | None = None  # which Row.column_match measures this column (None: the row's own match)


@dataclass(frozen=True)
class Row:
    label: str
    published: dict[str, float]
    # which runs measure this row: {"method": name, "params": {field: value, ...}, "budget_macs_ratio": r}
    match: dict[str, Any] = field(default_factory=dict)
    # a different match for single columns (Table 5: the "base" column is a ToCa run)
    column_match: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Analogue:
    """The table's comparison rerun on the embedded model of the same family (CPU, this machine): same rows,
    the quality measured against the uncached model instead of the paper's FID-30k / FID-50k."""

    model: str
    experiment: str  # experiments/<experiment>.yaml, run by ``dsbench reproduce``
    columns: tuple[Column, ...]
    match: dict[str, dict[str, Any]] = field(default_factory=dict)  # row label → its runs on this model
    absent: dict[str, str] = field(default_factory=dict)  # row label → why it has no analogue


@dataclass(frozen=True)
class PaperTable:
    id: str  # "table1" ... "table10", "stages", "search": the --layout name
    source: str
    title: str
    model: str  # the zoo model the table is about
    experiment: str | None  # our experiment file (experiments/<experiment>.yaml) that fills it on a GPU
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    note: str = ""
    analogue: Analogue | None = None
    no_analogue: str = ""  # why there is none yet


T = 1e-12  # MACs → T MACs
MACS_T = Column("macs", "MACs (T)", "macs", T, 3)
MACS_CFG_T = Column("macs", "MACs (T, CFG counted)", "macs_cfg_counted", T, 3)
SPEEDUP = Column("speedup", "Speedup", "speedup", 1.0, 2)
FID = Column("fid", "FID", "fid")
CLIP = Column("clip", "CLIP", "clip_score_legacy", 0.01, 3)


def _rows(columns: tuple[str, ...], *entries) -> tuple[Row, ...]:
    """Rows from (label, match, value, value, ...) tuples in the order of ``columns``."""
    return tuple(Row(label, dict(zip(columns, values)), match) for label, match, *values in entries)


def _steps(fraction: float) -> dict:
    return {"method": "steps", "params": {"fraction": fraction}}


def _diffsparse(tag: str) -> dict:
    """[PD] A DiffSparse variant is the trained schedule it runs (the ablations are separate trainings), matched
    by the folder it was trained into: ``<tag>/schedule.json`` (``schedules/<model>/<tag>`` in the GPU files,
    ``results/diffsparse/<embedded model>/ablations/<tag>`` in the analogues)."""
    return {"method": "diffsparse", "params": {"schedule": f"/{tag}/schedule.json"}}


def schedule_path(model: str, tag: str) -> str:
    return f"schedules/{model}/{tag}/schedule.json"


# Columns of the analogues: quality against the uncached embedded model, at MAC ratios comparable across sizes.
MACS_RATIO = Column("macs_ratio", "MAC ratio", "macs_ratio", 1.0, 3)
LPIPS = Column("lpips_alex", "LPIPS to full", "lpips_alex", 1.0, 4)
PSNR = Column("psnr", "PSNR to full (dB)", "psnr", 1.0, 2)
FID_DOMAIN = Column("fid", "FID (domain)", "fid", 1.0, 2)
SHAPES = (
    MACS_RATIO,
    SPEEDUP,
    LPIPS,
    PSNR,
    FID_DOMAIN,
    Column("attribute_accuracy", "Attribute acc.", "attribute_accuracy", 1.0, 3),
)
MNIST = (MACS_RATIO, SPEEDUP, LPIPS, PSNR, FID_DOMAIN, Column("class_accuracy", "Class acc.", "class_accuracy", 1.0, 3))
ABLATION = (MACS_RATIO, LPIPS, PSNR, FID_DOMAIN)
NO_DICACHE = {"DiCache": "DiCache is not implemented in dsbench"}


TABLES: dict[str, PaperTable] = {
    t.id: t
    for t in (
        PaperTable(
            "table1",
            f"{PAPER}, Table 1",
            "Text-to-image on MS-COCO2017, PixArt-α 256², 20 DPM-Solver++ steps",
            "pixart-alpha-256",
            "table1_pixart",
            (MACS_T, SPEEDUP, Column("fid", "FID-30k", "fid"), CLIP),
            _rows(
                ("macs", "speedup", "fid", "clip"),
                ("PixArt-α", {"method": "full"}, 2.86, 1.00, 28.20, 0.163),
                ("50% steps", _steps(0.5), 1.43, 1.74, 37.57, 0.158),
                ("FORA (N=2)", {"method": "fora", "params": {"interval": 2}}, 1.43, 1.64, 29.67, 0.164),
                ("DeepCache (N=2)", {"method": "deepcache"}, 1.48, 1.61, 29.61, 0.163),
                ("DiCache", {"method": "dicache"}, 1.63, 1.77, 28.19, 0.164),
                ("ToCa", {"method": "toca"}, 1.64, 1.75, 28.35, 0.164),
                ("DuCa", {"method": "duca"}, 1.63, 1.78, 27.98, 0.164),
                ("TaylorSeer", {"method": "taylorseer"}, 1.57, 1.83, 29.08, 0.163),
                ("DiffSparse (R=43%)", _diffsparse("r43"), 1.64, 1.74, 26.91, 0.164),
                ("DiffSparse (R=54%)", _diffsparse("r54"), 1.30, 1.91, 27.79, 0.164),
            ),
            "MACs without the CFG half (docs/accounting.md); CLIP = Convention A / 100 (docs/evaluation.md#metrics).",
            Analogue("shapes-pixart", "paper_table1", SHAPES, absent=NO_DICACHE),
        ),
        PaperTable(
            "table2",
            f"{PAPER}, Table 2",
            "Class-conditional ImageNet, DiT-XL/2 256², 50 DDIM steps",
            "dit-xl-2-256",
            "table2_dit",
            (
                MACS_CFG_T,
                SPEEDUP,
                FID,
                Column("sfid", "sFID", "sfid"),
                Column("precision", "Prec.", "precision"),
                Column("recall", "Rec.", "recall"),
            ),
            _rows(
                ("macs", "speedup", "fid", "sfid", "precision", "recall"),
                ("DDIM-50", {"method": "full"}, 11.44, 1.00, 2.26, 4.29, 0.80, 0.60),
                ("DDIM-40", {"method": "steps", "params": {"num_steps": 40}}, 9.14, 1.24, 2.39, 4.28, 0.80, 0.59),
                ("DDIM-25", {"method": "steps", "params": {"num_steps": 25}}, 5.73, 1.96, 3.01, 4.60, 0.79, 0.58),
                ("DDIM-20", {"method": "steps", "params": {"num_steps": 20}}, 4.58, 2.42, 3.48, 4.64, 0.79, 0.56),
                ("FORA", {"method": "fora"}, 4.13, 2.12, 3.88, 6.74, 0.79, 0.56),
                ("ToCa", {"method": "toca"}, 4.97, 2.09, 3.05, 4.70, 0.79, 0.57),
                ("DuCa", {"method": "duca"}, 4.94, 2.10, 3.04, 4.70, 0.79, 0.57),
                ("DiffSparse", _diffsparse("default"), 4.97, 2.07, 2.81, 4.61, 0.80, 0.59),
            ),
            "MACs count both CFG halves (docs/accounting.md). sFID is not computed by dsbench.metrics (ADM evaluator).",
            Analogue(
                "mnist-dit",
                "paper_table2",
                MNIST,
                match={  # mnist-dit samples 20 steps: the same fractions
                    "DDIM-40": _steps(0.8),
                    "DDIM-25": _steps(0.5),
                    "DDIM-20": _steps(0.4),
                },
            ),
        ),
        PaperTable(
            "table3",
            f"{PAPER}, Table 3",
            "Text-to-video, Wan2.1-T2V-1.3B, 20 steps, VBench",
            "wan2.1-1.3b",
            "table3_wan",
            (MACS_T, SPEEDUP, Column("vbench", "VBench", "vbench_total", 100.0)),
            _rows(
                ("macs", "speedup", "vbench"),
                ("Wan2.1-1.3B", {"method": "full"}, 43.866, 1.00, 43.82),
                ("50% steps", _steps(0.5), 21.933, 1.86, 43.14),
                ("DuCa (R=54%)", {"method": "duca", "budget_macs_ratio": 0.46}, 20.332, 1.69, 43.56),
                ("DuCa (R=59%)", {"method": "duca", "budget_macs_ratio": 0.41}, 18.124, 1.68, 43.30),
                ("DiffSparse", _diffsparse("default"), 18.124, 2.05, 43.83),
            ),
            "The paper's VBench aggregation is unstated; ours is the VBench Total × 100 (docs/evaluation.md#metrics).",
            no_analogue="the embedded model zoo has no video model yet (a small WanTransformer3DModel is planned)",
        ),
        PaperTable(
            "table4",
            f"{PAPER}, Table 4",
            "PixArt-α 512², 20 steps (schedule trained at 256² and transferred)",
            "pixart-alpha-512",
            "table4_pixart512",
            (MACS_T, FID, CLIP),
            _rows(
                ("macs", "fid", "clip"),
                ("PixArt-α", {"method": "full"}, 10.851, 21.95, 0.164),
                ("50% steps", _steps(0.5), 5.426, 25.05, 0.163),
                ("ToCa", {"method": "toca"}, 5.993, 23.02, 0.165),
                ("DiffSparse", _diffsparse("r43"), 5.986, 22.42, 0.165),
            ),
            analogue=Analogue("shapes-pixart-64", "paper_table4", SHAPES),
        ),
        PaperTable(
            "table5",
            f"{PAPER}, Table 5",
            "Ablation: token-importance metric (PixArt-α 256², FID)",
            "pixart-alpha-256",
            "ablation_importance",
            (Column("base", "FID base (ToCa schedule)", "fid"), Column("diffsparse", "FID w/ DiffSparse", "fid")),
            tuple(
                Row(
                    label,
                    {"base": base, "diffsparse": ours},
                    _diffsparse(tag),
                    {"base": {"method": "toca", "params": {"importance": importance}}},
                )
                for label, importance, tag, base, ours in (
                    ("Norm", "norm", "importance_norm", 29.05, 28.89),
                    ("Similarity", "similarity", "importance_similarity", 29.00, 28.07),
                    ("Attention", "attention", "r43", 28.35, 26.91),
                )
            ),
            "'Base' is ToCa's hand-set schedule with that importance metric.",
            Analogue(
                "shapes-pixart",
                "paper_ablations",
                (
                    Column("base_lpips_alex", "LPIPS base (ToCa)", "lpips_alex", 1.0, 4, match="base"),
                    Column("diffsparse_lpips_alex", "LPIPS w/ DiffSparse", "lpips_alex", 1.0, 4),
                    Column("base_fid", "FID base (ToCa, domain)", "fid", match="base"),
                    Column("diffsparse_fid", "FID w/ DiffSparse (domain)", "fid"),
                ),
            ),
        ),
        PaperTable(
            "table6",
            f"{PAPER}, Table 6",
            "Ablation: distillation loss (PixArt-α 256²)",
            "pixart-alpha-256",
            "ablation_loss",
            (FID, CLIP),
            _rows(
                ("fid", "clip"),
                ("L2", _diffsparse("loss_l2"), 27.68, 0.164),
                ("SSIM", _diffsparse("loss_ssim"), 27.46, 0.164),
                ("LPIPS", _diffsparse("r43"), 26.91, 0.164),
            ),
            analogue=Analogue("shapes-pixart", "paper_ablations", ABLATION),
        ),
        PaperTable(
            "table7",
            f"{PAPER}, Table 7",
            "Ablation: level interval (size of S) (PixArt-α 256²)",
            "pixart-alpha-256",
            "ablation_interval",
            (FID, CLIP),
            _rows(
                ("fid", "clip"),
                ("0.1 (|S|=11)", _diffsparse("interval_0.1"), 27.96, 0.163),
                ("0.125 (|S|=9)", _diffsparse("interval_0.125"), 27.91, 0.163),
                ("0.25 (|S|=5)", _diffsparse("r43"), 26.91, 0.164),
                ("0.5 (|S|=3)", _diffsparse("interval_0.5"), 27.54, 0.164),
                ("1.0 (|S|=2)", _diffsparse("interval_1.0"), 28.22, 0.162),
            ),
            analogue=Analogue(
                "shapes-pixart", "paper_ablations", ABLATION, match={"1.0 (|S|=2)": _diffsparse("interval_1")}
            ),
        ),
        PaperTable(
            "table8",
            f"{PAPER}, Table 8",
            "Ablation: warm-start strength δ (PixArt-α 256², T = 20)",
            "pixart-alpha-256",
            "ablation_delta",
            (FID, CLIP),
            _rows(
                ("fid", "clip"),
                ("δ = 0", _diffsparse("delta_0"), 27.40, 0.163),
                ("δ = 5", _diffsparse("delta_5"), 27.01, 0.164),
                ("δ = 10", _diffsparse("r43"), 26.91, 0.164),
                ("δ = 20", _diffsparse("delta_20"), 26.95, 0.164),
            ),
            analogue=Analogue("shapes-pixart", "paper_ablations", ABLATION),
        ),
        PaperTable(
            "table9",
            f"{PAPER}, Table 9",
            "Text-to-image, FLUX.1-schnell 256², 4 steps, PartiPrompts",
            "flux-schnell",
            "table9_flux",
            (MACS_T, Column("image_reward", "ImageReward", "image_reward", 1.0, 3)),
            _rows(
                ("macs", "image_reward"),
                ("FLUX.1-schnell", {"method": "full"}, 13.247, 1.064),
                ("75% steps", _steps(0.75), 9.936, 1.063),
                ("ToCa", {"method": "toca"}, 7.313, 1.063),
                ("DiffSparse", _diffsparse("default"), 7.316, 1.184),
            ),
            "The text reports a 1.81× speedup for DiffSparse on FLUX (§A.6); ToCa runs R = 0.571, tuned to the "
            "published 7.313 T (its public configuration is not given).",
            no_analogue=(
                "the embedded model zoo has no FLUX-class model yet (a small FluxTransformer2DModel is planned)"
            ),
        ),
        PaperTable(
            "table10",
            f"{PAPER}, Table 10",
            "Ablation: score terms removed one at a time (PixArt-α 256²)",
            "pixart-alpha-256",
            "ablation_score_terms",
            (FID, CLIP),
            _rows(
                ("fid", "clip"),
                ("DiffSparse (full score)", _diffsparse("r43"), 26.91, 0.164),
                ("−s1 (self-attention influence)", _diffsparse("no_s1"), 27.11, 0.164),
                ("−s2 (cross-attention focus)", _diffsparse("no_s2"), 27.48, 0.163),
                ("−s3 (cache-reuse frequency)", _diffsparse("no_s3"), 27.23, 0.164),
                ("−B (spatial bonus)", _diffsparse("no_bonus"), 27.05, 0.164),
            ),
            analogue=Analogue(
                "shapes-pixart",
                "paper_ablations",
                ABLATION,
                absent={
                    "−s1 (self-attention influence)": "λ1 = 0 on PixArt (§A.5.1): without s1 the score is the base's"
                },
            ),
        ),
        PaperTable(
            "stages",
            f"{PAPER}, §4.3",
            "Two-stage vs single-stage training (PixArt-α 256², R = 43 %)",
            "pixart-alpha-256",
            None,
            (FID,),
            _rows(
                ("fid",),
                ("two-stage (DP + fine-tune)", _diffsparse("r43"), 26.91),
                ("single-stage", _diffsparse("single"), 27.40),
            ),
            "Numbers from the paper's text; it gives FID only.",
            Analogue("shapes-pixart", "paper_ablations", ABLATION),
        ),
        PaperTable(
            "search",
            f"{PAPER}, §A.5.4",
            "Learned schedule vs search (PixArt-α 256², R = 43 %)",
            "pixart-alpha-256",
            None,
            (FID,),
            _rows(
                ("fid",),
                ("DiffSparse", _diffsparse("r43"), 26.91),
                ("genetic algorithm", _diffsparse("ga"), 27.94),
                ("random search", _diffsparse("random"), 28.34),
            ),
            "The paper's searches: 1,000 iterations on 500 images each. Ours (python -m dsbench.training.compare): "
            "the same wall time per arm (DiffSparse training, GA, random search), fitness on 16 conditions.",
            Analogue(
                "shapes-pixart",
                "paper_search",
                (MACS_RATIO, LPIPS, PSNR, FID_DOMAIN),
                match={"DiffSparse": _diffsparse("diffsparse")},
            ),
        ),
    )
}


@dataclass(frozen=True)
class Claim:
    """One conclusion of the paper's ablations: the paper's setting of one training field beats the others.
    ``published``: the paper's FID per setting (as :func:`setting_text` writes it), the chosen one included."""

    field: str  # the DiffSparse training field (TrainConfig) the ablation changes
    chosen: Any  # the paper's setting, the base every variant is compared with
    source: str
    text: str
    published: dict[str, float]


def setting_text(value: Any) -> str:
    """A training setting as the ablations table writes it: 0.25, lpips, s2+B ([] → none)."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


# The paper's ablation conclusions on PixArt-α 256² (Tables 5-8 and 10, and two- vs single-stage in §4.3).
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "importance",
        "attention",
        f"{PAPER}, Table 5",
        "attention importance beats norm and similarity",
        {"norm": 28.89, "similarity": 28.07, "attention": 26.91},
    ),
    Claim(
        "loss",
        "lpips",
        f"{PAPER}, Table 6",
        "the LPIPS distillation loss beats L2 and SSIM",
        {"l2": 27.68, "ssim": 27.46, "lpips": 26.91},
    ),
    Claim(
        "interval",
        0.25,
        f"{PAPER}, Table 7",
        "level interval 0.25 (|S| = 5) beats coarser and finer level sets",
        {"0.1": 27.96, "0.125": 27.91, "0.25": 26.91, "0.5": 27.54, "1": 28.22},
    ),
    Claim(
        "delta",
        10.0,
        f"{PAPER}, Table 8",
        "warm start δ = 10 beats δ = 0, 5 and 20",
        {"0": 27.40, "5": 27.01, "10": 26.91, "20": 26.95},
    ),
    Claim(
        "drop",
        [],
        f"{PAPER}, Table 10",
        "every score term helps: removing s1, s2, s3 or B is worse",
        {"s1": 27.11, "s2": 27.48, "s3": 27.23, "B": 27.05, "none": 26.91},
    ),
    Claim(
        "stages",
        "two",
        f"{PAPER}, §4.3",
        "two-stage training beats single-stage training",
        {"single": 27.40, "two": 26.91},
    ),
)


@dataclass(frozen=True)
class Beats:
    """A claim of the paper's main comparisons: in ``table``, the row ``winner`` is better than each of
    ``others`` (at the MACs the table gives them); the evidence is the table's own published numbers."""

    table: str  # a TABLES id
    winner: str  # row label
    others: tuple[str, ...]  # row labels
    text: str


BEATS: tuple[Beats, ...] = (
    Beats(
        "table1",
        "DiffSparse (R=43%)",
        ("ToCa", "DuCa", "TaylorSeer", "DeepCache (N=2)", "FORA (N=2)", "50% steps"),
        "DiffSparse beats the caching baselines and step reduction (PixArt-α, text-to-image)",
    ),
    Beats(
        "table2",
        "DiffSparse",
        ("ToCa", "DuCa", "FORA", "DDIM-25", "DDIM-20"),
        "DiffSparse beats the caching baselines and fewer DDIM steps (DiT-XL/2, class-conditional)",
    ),
    Beats(
        "table4",
        "DiffSparse",
        ("ToCa", "50% steps"),
        "a schedule learned at 256² still beats ToCa and step reduction at 512² (PixArt-α)",
    ),
    Beats(
        "search",
        "DiffSparse",
        ("genetic algorithm", "random search"),
        "the learned schedule beats a genetic algorithm and random search over schedules",
    ),
)


@dataclass(frozen=True)
class Keeps:
    """Another seed paper's headline claim: ``method`` keeps the uncached model's quality — ``metric`` within
    ``margin`` of it — at fewer MACs. Decided on the embedded analogue ``experiment`` (run by dsbench reproduce)."""

    source: str
    text: str
    published: str  # the paper's evidence
    experiment: str
    model: str
    method: str
    metric: str
    margin: float


KEEPS: tuple[Keeps, ...] = (
    Keeps(
        "SparseDiT paper, DiT-XL/2 results",
        "SparseDiT keeps the dense model's quality at fewer MACs",
        "DiT-XL/2 256², r ∈ [0.61, 0.86]: 118.64 → 68.05 G MACs, FID 2.27 → 2.38",
        "paper_sparsedit",
        "mnist-dit",
        "sparsedit",
        "class_accuracy",
        0.02,
    ),
)
