"""The DiffSparse paper's claims checked on the embedded analogues of its tables, one verdict each.

Two kinds of claim: the main comparisons (:data:`dsbench.reference_results.BEATS`: DiffSparse beats ToCa,
DuCa, FORA, … and the search baselines), decided by the paired bootstrap over the images × sampling seeds
both runs share (one trained schedule: the spread between trainings is not in it, see the note), and the
ablations (:data:`dsbench.reference_results.CLAIMS`), decided over training seeds by
:func:`dsbench.report.ablations`. Verdicts: reproduces, does not reproduce (the other is better), or cannot
be separated at this size — never a ranking the interval does not support.
"""

from __future__ import annotations

from dsbench import report, stats
from dsbench.reference_results import BEATS, KEEPS, TABLES, Beats, Keeps
from dsbench.report import Column, Table, fixed, text, with_interval

METRIC = "lpips_alex"  # to the uncached model, per image: the analogues' primary quality measure


def _summary(frame, table: str, label: str) -> dict | None:
    """The one configuration of the table's analogue that measures row ``label`` (None: none, or several)."""
    spec = TABLES[table]
    runs, _, _, analogue = report.table_runs(frame, spec, None, None)
    if analogue is None or label in analogue.absent:
        return None
    row = next(r for r in spec.rows if r.label == label)
    hits = runs[[report.matches(r, analogue.match.get(label, row.match)) for _, r in runs.iterrows()]]
    summary = report.summarise(hits) if not hits.empty else None
    return None if summary is None or len(summary) != 1 else summary.iloc[0].to_dict()


def _verdict(difference: tuple[float, float, float]) -> str:
    """``difference``: winner − other in a lower-is-better metric, with its interval."""
    if difference[0] == 0 and difference[1] == difference[2]:
        return "cannot be separated (identical outputs)"
    if not stats.excludes_zero(difference[1:]):
        return "cannot be separated at this size"
    return "reproduces" if difference[0] < 0 else "does not reproduce (the other is better)"


def _beats_rows(frame, claim: Beats) -> list[list]:
    spec = TABLES[claim.table]
    published = {r.label: r.published for r in spec.rows}
    winner = _summary(frame, claim.table, claim.winner)
    rows = []
    for other in claim.others:
        loser = _summary(frame, claim.table, other)
        paired = (
            None
            if winner is None or loser is None
            else report.paired_difference(winner["_units"].get(METRIC), loser["_units"].get(METRIC))
        )
        where = [
            spec.source.split(", ")[-1],
            claim.text,
            f"{claim.winner} − {other} in {METRIC} (claimed: < 0)",
            f"{published[other]['fid']:.2f} → {published[claim.winner]['fid']:.2f}",
        ]
        if paired is None:
            rows.append([*where, "—", None, None, None, None, None, "not measured (run dsbench reproduce)"])
            continue
        units = len(winner["_units"][METRIC][0])
        rows.append(
            [
                *where,
                f"1 schedule, {units} images × seeds",
                f"{winner['macs_ratio']:.3f} vs {loser['macs_ratio']:.3f}",
                paired,
                *paired,
                _verdict(paired),
            ]
        )
    return rows


def _ablation_rows(frame) -> list[list]:
    """The ablation claims decided over training seeds (the runs of the ablations' analogue)."""
    experiment = TABLES["table6"].analogue.experiment
    if not (frame["experiment"] == experiment).any():
        return []
    rows = []
    for r in report.ablations(frame, experiment, METRIC).records():
        seeds = f"{r['training_seeds']} training seed{'s' if r['training_seeds'] != 1 else ''}"
        key = f"{METRIC}_difference"
        paired = (-r[key], -r[f"{key}_ci_high"], -r[f"{key}_ci_low"])  # chosen − variant: < 0 as claimed
        paper = " → ".join(reversed(r["paper_fid"].split(" → ")))  # variant → the paper's choice
        rows.append(
            [
                r["source"],
                r["claim"],
                f"paper's choice − {r['variant']} in {METRIC} (claimed: < 0)",
                paper,
                seeds,
                f"{r['macs_ratio']:.3f}",
                paired,
                *paired,
                r["verdict"],
            ]
        )
    return rows


def _keeps_rows(frame, claim: Keeps) -> list[list]:
    """``claim.method`` − the uncached model in ``claim.metric`` (higher is better), paired over images × seeds:
    reproduces when the whole interval lies above −margin, does not when it lies below."""
    runs = frame[(frame["experiment"] == claim.experiment) & (frame["model"] == claim.model)]
    summary = {r["method"]: r for r in report.summarise(runs).to_dict("records")} if not runs.empty else {}
    full, method = summary.get("full"), summary.get(claim.method)
    paired = (
        None
        if full is None or method is None
        else report.paired_difference(method["_units"].get(claim.metric), full["_units"].get(claim.metric))
    )
    compared = f"{claim.method} − uncached in {claim.metric} (claimed: > −{claim.margin:g})"
    if paired is None:
        return [
            [
                claim.source,
                claim.text,
                compared,
                claim.published,
                "—",
                None,
                None,
                None,
                None,
                None,
                "not measured (run dsbench reproduce)",
            ]
        ]
    if paired[1] >= -claim.margin:
        verdict = "reproduces"
    elif paired[2] < -claim.margin:
        verdict = f"does not reproduce ({-paired[0]:.3f} below the uncached model)"
    else:
        verdict = "cannot be decided at this size"
    units = len(method["_units"][claim.metric][0])
    return [
        [
            claim.source,
            claim.text,
            compared,
            claim.published,
            f"{units} images × seeds",
            f"{method['macs_ratio']:.3f}",
            paired,
            *paired,
            verdict,
        ]
    ]


ABLATION_TABLES = ("table5", "table6", "table7", "table8", "table10", "stages")


def claims(frame, tables: list[str] | None = None) -> Table:
    """The claims of :data:`BEATS` and of the ablations with the paper's evidence, ours and a verdict; those of
    ``tables`` only, when given."""
    rows = [row for claim in BEATS if tables is None or claim.table in tables for row in _beats_rows(frame, claim)]
    if tables is None or set(tables) & set(ABLATION_TABLES):
        rows += _ablation_rows(frame)
    if tables is None or "others" in tables:
        rows += [row for claim in KEEPS for row in _keeps_rows(frame, claim)]
    key = "difference"
    columns = [
        Column("Paper", text, key="source"),
        Column("Claim", text, key="claim"),
        Column("Compared", text, key="compared"),
        Column("Paper FID (other → claimed better)", text, key="paper_fid"),
        Column("Our evidence", text, key="evidence"),
        Column("MAC ratio (ours)", text, key="macs_ratio"),
        Column("Δ [95 % interval]", with_interval(4), ("md", "tex")),
        *(Column(f"{key}{suffix}", fixed(6), ("csv",)) for suffix in ("", "_ci_low", "_ci_high")),
        Column("Verdict", text, key="verdict"),
    ]
    notes = [
        f"Ours: the embedded analogues (shapes-pixart for PixArt-α, mnist-dit for DiT-XL/2), {METRIC} to the "
        "uncached model per image (lower is better) unless the row says otherwise. Main comparisons: one "
        "trained schedule, paired bootstrap 95 % interval over images × sampling seeds — it does not include "
        "the spread between trainings, which the ablations show can be as large as the differences. "
        "Ablations: Student-t 95 % interval over training seeds of the per-seed paired differences "
        "(the paper's choice − the variant); with one training seed, the paired bootstrap over images × "
        "sampling seeds, which again leaves out the spread between trainings.",
        "reproduces: the paper's direction at 95 %; cannot be separated: the interval contains 0; "
        "does not reproduce: the opposite direction at 95 %. A claim of keeping quality within a margin "
        "reproduces when the whole interval is above −margin.",
    ]
    return Table("The DiffSparse paper's claims on the embedded models", columns, rows, notes)
