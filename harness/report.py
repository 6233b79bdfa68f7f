"""Tables and plots from the results store only (``Store.frame()``): nothing here runs a model.

* :func:`leaderboard` — methods × metrics, one row per configuration (mean over seeds), MAC ratio and
  latency speedup both shown, sorted by a quality metric.
* :func:`paper_table` — the layouts of the DiffSparse paper's Tables 1-10 (and its two-stage and search
  comparisons) with the published numbers (:mod:`dsbench.reference_results`) beside ours with their
  intervals — from the GPU experiment, or from the embedded analogue — "—" where we have no run.
* :func:`ablations` — the paper's ablation claims decided over training seeds: reproduces, does not, or
  cannot be separated. :func:`sample_size` — how many images would separate neighbouring methods.
* :func:`write` — Markdown, LaTeX (booktabs) or CSV for any :class:`Table`.
* :func:`pareto_plot`, :func:`heatmaps`, :func:`grid_compare` — PNG figures (matplotlib, Agg canvas).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsbench import stats
from dsbench.core import Kind
from dsbench.methods.base import method_class
from dsbench.reference_results import CLAIMS, TABLES, Analogue, Claim, PaperTable, Row, setting_text
from dsbench.reference_results import Column as PaperColumn
from dsbench.store import COLUMNS

# Quality metrics and which way is better. Alignment metrics of the embedded models end in "_accuracy".
LOWER_IS_BETTER = ("lpips_alex", "lpips_vgg", "fid", "kid_mean", "sfid")
HIGHER_IS_BETTER = (
    "psnr",
    "ssim",
    "class_accuracy",
    "attribute_accuracy",
    "scene_accuracy",
    "precision",
    "recall",
    "is_mean",
    "clip_score",
    "clip_score_legacy",
    "image_reward",
    "vbench_total",
)
# Default sort metric: the first of these the frame has (fidelity to the teacher is measured on every run).
SORT_PREFERENCE = (
    "lpips_alex",
    "fid",
    "psnr",
    "class_accuracy",
    "attribute_accuracy",
    "image_reward",
    "clip_score",
    "vbench_total",
)
# Configuration identity for averaging over seeds: everything of a run's identity except the seed.
CONFIG_KEYS = (
    "model",
    "method",
    "params",
    "budget_macs_ratio",
    "bracket",
    "sampler",
    "steps",
    "guidance",
    "eval_set",
    "n_samples",
)
COST_COLUMNS = (
    "macs",
    "macs_full",
    "macs_ratio",
    "macs_attention",
    "latency_s",
    "latency_full_s",
    "speedup",
    "peak_memory_mb",
)
LAYOUTS = ("leaderboard", "ablations", "sample-size", *TABLES)
FORMATS = ("md", "tex", "csv")
MISSING = "—"


def direction(metric: str) -> str | None:
    """ "min" or "max" for a known quality metric, None otherwise."""
    if metric in LOWER_IS_BETTER:
        return "min"
    if metric in HIGHER_IS_BETTER or metric.endswith("_accuracy"):
        return "max"
    return None


# ---------------------------------------------------------------------------------------------- tables


@dataclass
class Column:
    """``shown``: the formats the column appears in — a leaderboard keeps its detail (CI bounds, latency,
    budget) to the CSV and shows intervals beside the values in Markdown and LaTeX."""

    header: str
    fmt: Callable[[Any], str]
    shown: tuple[str, ...] = ("md", "tex", "csv")
    key: str | None = None  # the CSV header (machine-readable), when it differs from ``header``


@dataclass
class Table:
    """Raw cell values (CSV writes them as they are) with a formatter per column (Markdown, LaTeX)."""

    title: str
    columns: list[Column]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def formatted(self, fmt: str = "md") -> list[list[str]]:
        return [
            [MISSING if _missing(v) else c.fmt(v) for c, v in zip(self.columns, row) if fmt in c.shown]
            for row in self.rows
        ]

    def headers(self, fmt: str) -> list[str]:
        return [(c.key or c.header) if fmt == "csv" else c.header for c in self.columns if fmt in c.shown]

    def raw(self, fmt: str) -> list[list[Any]]:
        return [[v for c, v in zip(self.columns, row) if fmt in c.shown] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by the CSV headers (what scripts and tests read)."""
        return [dict(zip(self.headers("csv"), row)) for row in self.raw("csv")]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_interval(digits: int) -> Callable[[Any], str]:
    """A (value, low, high) cell as ``0.0123 [0.0101, 0.0150]``; the value alone where the interval is unknown."""
    number = fixed(digits)

    def fmt(cell):
        value, low, high = cell
        if _missing(value):
            return MISSING
        if _missing(low) or _missing(high):
            return number(value)
        return f"{number(value)} [{number(low)}, {number(high)}]"

    return fmt


def fixed(digits: int) -> Callable[[Any], str]:
    """Fixed decimals; values too small to show that way (embedded models' MACs in T) get 3 significant digits."""

    def fmt(v):
        if isinstance(v, str):
            return v
        v = float(v)
        return f"{v:.{digits}f}" if v == 0 or abs(v) >= 10**-digits else f"{v:.3g}"

    return fmt


def si(v) -> str:
    """12.3G, 2.86T: MAC counts span M (tests) to T (real models)."""
    v = float(v)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def times(v) -> str:
    if isinstance(v, tuple):
        value, low, high = v
        inner = "" if _missing(low) or _missing(high) else f" [{float(low):.2f}, {float(high):.2f}]"
        return f"{float(value):.2f}×{inner}"
    return f"{float(v):.2f}×"


def text(v) -> str:
    return str(v)


def to_markdown(table: Table) -> str:
    headers = table.headers("md")
    lines = [f"**{table.title}**", "", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.formatted("md")]
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "×": r"$\times$",
    "—": "---",
    "−": "$-$",
    "α": r"$\alpha$",
    "δ": r"$\delta$",
    "²": r"$^2$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "∞": r"$\infty$",
    "Δ": r"$\Delta$",
    "θ": r"$\theta$",
    "λ": r"$\lambda$",
    "·": r"$\cdot$",
    "→": r"$\rightarrow$",
    "↔": r"$\leftrightarrow$",
    "…": r"\ldots{}",
    "–": "--",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "≈": r"$\approx$",
    "±": r"$\pm$",
    "ℓ": r"$\ell$",
    "μ": r"$\mu$",
    "σ": r"$\sigma$",
    "ρ": r"$\rho$",
    "§": r"\S{}",
    "’": "'",
    "“": "``",
    "”": "''",
}


def tex_escape(s: str) -> str:
    """Text safe in a LaTeX document: specials escaped, the Unicode symbols dsbench prints in math mode; a
    leading "[" braced (it would read as the optional argument of the ``\\\\`` or ``\\item`` before it)."""
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)
    return "{}" + out if out.startswith("[") else out


_INF = re.compile(r"(?<![A-Za-z])([-+−]?)(inf|∞)(?![A-Za-z])")
_CODE = re.compile(r"`([^`]+)`")


def _numeric(value) -> bool:
    if isinstance(value, tuple):
        return bool(value) and _numeric(value[0])
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _tex_cell(cell: str, numeric: bool) -> str:
    r"""One cell: escaped text; in numeric columns ``inf`` / ``-inf`` as ``$\infty$`` / ``$-\infty$``."""
    if not numeric:
        return tex_escape(cell)
    parts, last = [], 0
    for m in _INF.finditer(cell):
        parts += [tex_escape(cell[last : m.start()]), r"$-\infty$" if m.group(1) in ("-", "−") else r"$\infty$"]
        last = m.end()
    return "".join(parts) + tex_escape(cell[last:])


def tex_text(s: str) -> str:
    """Prose for LaTeX: Markdown `code` as \\texttt, the rest escaped."""
    parts, last = [], 0
    for m in _CODE.finditer(s):
        parts += [tex_escape(s[last : m.start()]), rf"\texttt{{{tex_escape(m.group(1))}}}"]
        last = m.end()
    return "".join(parts) + tex_escape(s[last:])


def _tex_notes(notes: list[str]) -> list[str]:
    """The notes as a footnote-size list below the tabular: each note an item; a section heading ("Off budget
    (> 2 %): why") in italics with its "- " lines as a nested list; blank lines dropped."""
    lines = [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize", r"\begin{itemize}"]
    nested = False
    for note in notes:
        if not note.strip():
            continue
        if note.startswith("- "):
            if not nested:
                lines.append(r"\begin{itemize}")
                nested = True
            lines.append(r"\item{} " + tex_text(note[2:]))
            continue
        if nested:
            lines.append(r"\end{itemize}")
            nested = False
        heading = note.rstrip().endswith(": why") or note.startswith(("Interpolated at", "Schedules"))
        lines.append(r"\item{} " + (rf"\textit{{{tex_text(note)}}}" if heading else tex_text(note)))
    if nested:
        lines.append(r"\end{itemize}")
    return [*lines, r"\end{itemize}", r"\end{minipage}"]


def to_latex(table: Table) -> str:
    """A booktabs tabular inside a table float (needs ``\\usepackage{booktabs}``): caption = title, text
    columns left-aligned and numeric ones right, every cell escaped, infinite values as ``$\\infty$``, the
    notes as a footnote-size list below the tabular (Markdown backticks as ``\\texttt``)."""
    headers = table.headers("tex")
    raw = table.raw("tex")
    numeric = [
        any(_numeric(row[j]) for row in raw) and all(_missing(row[j]) or _numeric(row[j]) for row in raw)
        for j in range(len(headers))
    ]
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_text(table.title)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_text(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    lines += [
        " & ".join(_tex_cell(cell, n) for cell, n in zip(row, numeric)) + r" \\" for row in table.formatted("tex")
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if any(n.strip() for n in table.notes):
        lines += _tex_notes(table.notes)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.headers("csv"))
    for row in table.raw("csv"):
        writer.writerow(["" if _missing(v) else v for v in row])
    return out.getvalue()


WRITERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def write(table: Table, fmt: str = "md", path: str | Path | None = None) -> str:
    """The table as text in ``fmt`` (md, tex, csv); also written to ``path`` when given."""
    if fmt not in WRITERS:
        raise ValueError(f"format: unknown {fmt!r}; allowed: {', '.join(FORMATS)}")
    body = WRITERS[fmt](table)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(body)
    return body


# ------------------------------------------------------------------------------------------ summaries


def _key(value) -> str:
    """A hashable, order-independent text for grouping (params are dicts, budgets may be None)."""
    return json.dumps(value, sort_keys=True, default=str)


def _select(frame, experiment: str | None):
    if experiment is not None:
        frame = frame[frame["experiment"] == experiment]
        if frame.empty:
            raise ValueError(f"experiment: no runs of {experiment!r} in the store")
    return frame


def metric_columns(frame) -> list[str]:
    """Numeric columns beyond the store's fixed ones: the metrics dsbench.metrics.compute returned."""
    import pandas as pd

    return [
        c
        for c in frame.columns
        if c not in COLUMNS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not c.startswith(("macs_", "latency_", "peak_"))
        and not c.endswith(("_ci_low", "_ci_high"))
    ]


def measured_metrics(frame) -> list[str]:
    """The metric columns with at least one value in ``frame``."""
    return [m for m in metric_columns(frame) if frame[m].notna().any()]


def _compared_metric(frame, metric: str | None) -> str:
    """``metric``, or the models' primary metric, or the first of :data:`SORT_PREFERENCE` measured; a metric
    the frame does not have is refused naming those it has."""
    available = measured_metrics(frame)
    metric = metric or _primary(frame) or default_sort_metric(frame)
    if metric not in available:
        raise ValueError(f"metric {metric!r} is not in the store; available: {', '.join(available) or 'none'}")
    return metric


def _units(group, metric: str) -> tuple[list, np.ndarray, np.ndarray | None] | None:
    """The evaluation units of ``metric`` over a configuration's seeds: (keys (seed, image), values, weights),
    or None when a row lacks per-image values (stored before they were kept, or a set metric such as FID)."""
    keys, values, weights = [], [], []
    for _, run in group.iterrows():
        kept = run.get("per_sample")
        if not isinstance(kept, dict) or metric not in kept:
            return None
        v = kept[metric]["values"]
        keys += [(run["seed"], i) for i in range(len(v))]
        values += v
        weights += kept[metric].get("weights") or [1.0] * len(v)
    w = np.asarray(weights, dtype=float)
    return keys, np.asarray(values, dtype=float), None if np.all(w == 1) else w


def _stored_interval(group, metric: str) -> tuple[float, float]:
    """The interval a run stored for a set metric (FID, KID, precision/recall: a bootstrap over its samples at
    run time); over several seeds the union of their intervals, which is wider than the mean's (conservative)."""
    import pandas as pd

    columns = (f"{metric}_ci_low", f"{metric}_ci_high")
    if not all(c in group.columns for c in columns):
        return float("nan"), float("nan")
    low, high = (pd.to_numeric(group[c], errors="coerce") for c in columns)
    return float(low.min(skipna=False)), float(high.max(skipna=False))


def run_interval(run: dict, metric: str) -> tuple[float, float]:
    """95 % interval of one stored run's ``metric``: the bootstrap over its images when it kept per-image values,
    else the interval it stored at run time (set metrics), else (nan, nan)."""
    kept = (run.get("per_sample") or {}).get(metric)
    if isinstance(kept, dict):
        return stats.mean_ci(kept["values"], kept.get("weights"))
    low, high = run.get(f"{metric}_ci_low"), run.get(f"{metric}_ci_high")
    return (
        (float(low), float(high))
        if isinstance(low, (int, float)) and isinstance(high, (int, float))
        else (float("nan"), float("nan"))
    )


def _speedup_interval(group) -> tuple[float, float]:
    """95 % interval of the speedup from the interleaved repeats of every seed, resampled as pairs."""
    full, method = [], []
    for _, run in group.iterrows():
        a, b = run.get("latency_full_seconds"), run.get("latency_seconds")
        if not isinstance(a, list) or not isinstance(b, list):
            return float("nan"), float("nan")
        full += a
        method += b
    return stats.ratio_of_medians_ci(full, method)


def summarise(frame):
    """One row per configuration (the run identity minus the seed and the code version): numeric columns
    averaged over the seeds of its newest code version (older versions' rows stay in the store as history
    but are never averaged with new ones; of several rows of one seed the newest counts), ``seeds`` counting
    them, the first run's label, tuned value and artifacts kept. Every metric with per-image values gets
    ``<metric>_ci_low`` / ``<metric>_ci_high`` (bootstrap over images × seeds), the speedup
    ``speedup_ci_low`` / ``speedup_ci_high``; ``_units`` keeps the per-image values for paired comparisons."""
    import pandas as pd

    if frame.empty:
        return frame.assign(seeds=pd.Series(dtype=int))
    keyed = frame.assign(_group=frame[list(CONFIG_KEYS)].apply(lambda r: _key(list(r)), axis=1))
    metrics = metric_columns(frame)
    numeric = [c for c in (*COST_COLUMNS, *metrics) if c in frame.columns]
    rows = []
    for _, group in keyed.groupby("_group", sort=False):
        versions = group["code_version"].fillna("")
        group = group[versions == versions.loc[group["created_at"].idxmax()]]
        # one row per seed: the newest (a rerun with more metrics, or --force, supersedes the older row)
        group = group.sort_values("created_at").drop_duplicates("seed", keep="last")
        first = group.iloc[0]
        row = {c: first[c] for c in (*CONFIG_KEYS, "label", "tuned", "experiment", "artifacts", "run_id")}
        row["budget_note"] = first.get("budget_note")  # absent from frames of rows stored before budget notes
        row.update({c: pd.to_numeric(group[c], errors="coerce").mean() for c in numeric})
        row["seeds"] = len(group)
        row["_units"] = {}
        for metric in metrics:
            units = _units(group, metric)
            if units is not None:
                row["_units"][metric] = units
                low, high = stats.mean_ci(units[1], units[2])
            else:  # a set metric: its run-time bootstrap interval (the union of the seeds' intervals)
                low, high = _stored_interval(group, metric)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        row["speedup_ci_low"], row["speedup_ci_high"] = _speedup_interval(group)
        rows.append(row)
    return pd.DataFrame(rows)


def _interpolate(low: dict, high: dict, t: float, metrics: list[str]) -> dict:
    """``low`` moved to the fraction ``t`` of the way to ``high``: per-image values interpolated image by image
    (so the interval and paired comparisons still hold), other numbers and bounds linearly."""
    row = dict(low)
    row["_units"] = dict(low["_units"])
    for column in (
        *COST_COLUMNS,
        "speedup_ci_low",
        "speedup_ci_high",
        *metrics,
        *(f"{m}{s}" for m in metrics for s in ("_ci_low", "_ci_high")),
    ):
        if column in low and column in high:
            row[column] = (1 - t) * float(low[column]) + t * float(high[column])
    for metric in metrics:
        a, b = low["_units"].get(metric), high["_units"].get(metric)
        if a is None or b is None or a[0] != b[0]:
            continue
        values = (1 - t) * a[1] + t * b[1]
        row["_units"][metric] = (a[0], values, a[2])
        row[metric] = float(np.average(values, weights=a[2]))
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = stats.mean_ci(values, a[2])
    return row


def at_budget(summary):
    """Every configuration at its budget where it can be: a configuration off its budget (an integer budget
    field, MACs that move in steps) that has a bracketing run just above the budget is replaced by its quality
    interpolated linearly in MAC ratio between the two (monotone), marked "interpolated"; the bracketing rows
    themselves leave the table. ``at_budget`` says "yes", "interpolated", "off" (no bracket: see the budget
    note) or "—" (no budget)."""
    import pandas as pd

    if summary.empty or "bracket" not in summary.columns:
        return summary.assign(at_budget=None)
    metrics = [c for c in summary.columns if f"{c}_ci_low" in summary.columns and c != "speedup"]
    above = summary[summary["bracket"] == "above"]
    rows = []
    for _, run in summary[summary["bracket"] != "above"].iterrows():
        row, budget = run.to_dict(), run["budget_macs_ratio"]
        off = isinstance(run.get("budget_note"), str) and bool(run["budget_note"])
        row["at_budget"] = "—" if _missing(budget) else "off" if off else "yes"
        match = (
            above[
                (above["model"] == run["model"])
                & (above["method"] == run["method"])
                & (above["params"].map(_key) == _key(run["params"]))
                & (above["budget_macs_ratio"].map(_key) == _key(budget))
            ]
            if off
            else above.iloc[:0]
        )
        if not match.empty:
            high = match.iloc[0].to_dict()
            r0, r1 = float(run["macs_ratio"]), float(high["macs_ratio"])
            if r0 < budget < r1:
                row = _interpolate(row, high, (budget - r0) / (r1 - r0), metrics)
                row["macs_ratio"], row["at_budget"] = float(budget), "interpolated"
                row["budget_note"] = (
                    f"interpolated at {budget:.2f} between its runs at MAC ratio {r0:.3f} "
                    f"({_tuned_text(run['tuned'])}) and {r1:.3f} ({_tuned_text(high['tuned'])})"
                )
                row["label"] = f"{run['label'] or run['method']} ↔ {_tuned_text(high['tuned'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(a, b) -> tuple[float, float, float] | None:
    """Mean difference a − b in one metric over the (seed, image) units both configurations measured, with the
    paired bootstrap 95 % interval; None when either lacks per-image values or they share fewer than 2 units.
    ``a``, ``b``: a summary row's ``_units[metric]`` — (unit keys, values, weights or None)."""
    if a is None or b is None:
        return None
    where_b = {key: i for i, key in enumerate(b[0])}
    pairs = sorted((key, i, where_b[key]) for i, key in enumerate(a[0]) if key in where_b)
    if len(pairs) < 2:
        return None
    pick_a, pick_b = [i for _, i, _ in pairs], [j for _, _, j in pairs]
    wa, wb = (None if w is None else w[pick] for w, pick in ((a[2], pick_a), (b[2], pick_b)))
    low, high = stats.paired_difference_ci(a[1][pick_a], b[1][pick_b], wa, wb)
    return float(np.average(a[1][pick_a], weights=wa) - np.average(b[1][pick_b], weights=wb)), low, high


def separable(upper: dict, lower: dict, metric: str) -> bool | None:
    """Whether two configurations differ in ``metric`` at 95 %: the paired bootstrap interval of the difference
    over their common (seed, image) units excludes 0. None when either lacks per-image values."""
    paired = paired_difference(upper["_units"].get(metric), lower["_units"].get(metric))
    return None if paired is None else stats.excludes_zero(paired[1:])


def _rankings(summary, by_budget: bool = True):
    """The groups ranked separately: per model and budget (per model alone when there is one budget, or
    ``by_budget`` is False); yields ((model, budget or None), rows)."""
    budgets = summary["budget_macs_ratio"].map(lambda v: "null" if _missing(v) else _key(v))
    distinct = budgets[budgets != "null"].unique()
    if not by_budget or len(distinct) < 2:  # one budget: one ranking per model
        only = json.loads(distinct[0]) if len(distinct) == 1 and by_budget else None
        for model, part in summary.groupby("model", sort=True):
            yield (model, only), part
        return
    for (model, budget), part in summary.groupby([summary["model"], budgets], sort=True):
        yield (model, None if budget == "null" else json.loads(budget)), part


def ranked(summary, sort_by: str, by_budget: bool = True):
    """``summary`` sorted per model (and budget, ``by_budget``) best first by ``sort_by``, with a ``rank`` column
    in groups: a configuration that cannot be told apart from the one above it (paired 95 % interval of the
    difference contains 0) shares its rank (1, 2, 2, 4 …); without per-image values the order alone decides."""
    import pandas as pd

    parts = []
    for _, part in _rankings(summary, by_budget):
        part = part.sort_values(sort_by, ascending=direction(sort_by) != "max", na_position="last", kind="stable")
        records = part.to_dict("records")
        apart = [separable(upper, lower, sort_by) is not False for upper, lower in zip(records, records[1:])]
        parts.append(part.assign(rank=stats.rank_groups(apart)))
    return pd.concat(parts, ignore_index=True) if parts else summary.assign(rank=pd.Series(dtype=int))


def default_sort_metric(frame) -> str | None:
    present = set(metric_columns(frame))
    return next((m for m in SORT_PREFERENCE if m in present and frame[m].notna().any()), None)


def shown_metrics(frame, sort_by: str | None) -> list[str]:
    """The metrics the Markdown leaderboard shows: the sort metric, then up to three secondary metrics per
    model — those its bundle declared (``report_metrics`` of the rows), else the first of
    :data:`SORT_PREFERENCE` present. Every metric stays in the CSV."""
    present = measured_metrics(frame)
    chosen = [sort_by] if sort_by else []
    for _, runs in frame.groupby("model", sort=True):
        declared = next((r for r in runs.get("report_metrics", []) if isinstance(r, list)), None)
        preferred = declared or [m for m in SORT_PREFERENCE if m in present]
        have = [m for m in preferred if m in present and runs[m].notna().any() and m != sort_by][:3]
        chosen += [m for m in have if m not in chosen]
    return chosen


def _tuned_text(tuned) -> str | None:
    if not tuned:
        return None
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.items())


def versus_column(summary, metric: str, reference: str) -> list[tuple[float, float, float, str]]:
    """Per configuration: (mean difference in ``metric`` to the ``reference`` method of its model, interval low,
    high, verdict) from a paired bootstrap over their common images × seeds; verdict "better", "worse" or
    "not separable" (the interval contains 0)."""
    out = []
    for _, row in summary.iterrows():
        ref = summary[(summary["model"] == row["model"]) & (summary["method"] == reference)]
        if ref.empty or row["method"] == reference:
            out.append((float("nan"), float("nan"), float("nan"), "reference" if not ref.empty else "no reference"))
            continue
        paired = paired_difference(row["_units"].get(metric), ref.iloc[0]["_units"].get(metric))
        if paired is None:
            out.append((float("nan"), float("nan"), float("nan"), "no per-image values"))
            continue
        diff, low, high = paired
        lower_better = direction(metric) != "max"
        verdict = (
            "not separable"
            if not stats.excludes_zero((low, high))
            else "better"
            if (diff < 0) == lower_better
            else "worse"
        )
        out.append((diff, low, high, verdict))
    return out


def leaderboard(
    frame,
    experiment: str | None = None,
    sort_by: str | None = None,
    budget: float | None = None,
    metrics: list[str] | None = None,
    versus: str | None = None,
) -> Table:
    """Methods at a matched budget, per model best first by ``sort_by`` (default: the models' primary metric,
    else the first of :data:`SORT_PREFERENCE` present), ranked in groups that say what is separable.

    Markdown/LaTeX show rank, method, tuned value, MAC ratio, speedup and the chosen metrics
    (:func:`shown_metrics`, or ``metrics``) each with its 95 % interval; the CSV has every column —
    budget, MACs, latency, memory, every metric with ``<metric>_ci_low`` / ``<metric>_ci_high``.
    ``budget`` keeps the runs of that MAC-ratio budget and the ``full`` baselines. ``versus``: a method name;
    adds the paired difference in the sort metric to that method, with its interval and a verdict."""
    frame = _select(frame, experiment)
    if versus is not None and versus not in set(frame["method"]):
        raise ValueError(
            f"versus: no runs of method {versus!r} in the selection; methods: {', '.join(sorted(set(frame['method'])))}"
        )
    if budget is not None:  # that budget's runs, `full`, and runs without a budget that cost about as much
        ratio = frame["budget_macs_ratio"].astype(float)
        unbudgeted = ratio.isna() & ((frame["method"] == "full") | (abs(frame["macs_ratio"] / budget - 1) <= 0.02))
        frame = frame[np.isclose(ratio, budget) | (frame["method"] == "full") | unbudgeted]
        if frame.empty:
            raise ValueError(f"budget: no runs at a MAC-ratio budget of {budget}")
    available = measured_metrics(frame)
    unknown = [m for m in [*(metrics or []), *([sort_by] if sort_by else [])] if m not in available]
    if unknown:
        raise ValueError(f"metric {unknown[0]!r} is not in the store; available: {', '.join(available) or 'none'}")
    primary = _primary(frame)
    sort_by = sort_by or (primary if primary in available else None) or default_sort_metric(frame)
    shown = list(metrics) if metrics else shown_metrics(frame, sort_by)
    summary = at_budget(summarise(frame))
    if sort_by is not None and not summary.empty:
        summary = ranked(summary, sort_by, by_budget=budget is None)
    else:
        summary = summary.assign(rank=None)
    brief, detail = ("md", "tex"), ("csv",)
    columns = [
        Column("Rank", text, key="rank"),
        Column("Model", text, key="model"),
        Column("Method", text, key="method"),
        Column("budget_macs_ratio", fixed(2), detail),
        Column("Tuned", text, key="tuned"),
        Column("macs", si, detail),
        Column("MAC ratio", fixed(3), key="macs_ratio"),
        Column("At budget", text, key="at_budget"),
        Column("Speedup", times, brief),
        *(Column(f"speedup{suffix}", fixed(3), detail) for suffix in ("", "_ci_low", "_ci_high")),
        Column("latency_s", fixed(3), detail),
        Column("peak_memory_mb", fixed(1), detail),
        *(Column(m, with_interval(4), brief) for m in shown),
        *(Column(f"{m}{suffix}", fixed(6), detail) for m in available for suffix in ("", "_ci_low", "_ci_high")),
        Column("Seeds", text, key="seeds"),
        Column("images", text, detail),
    ]
    compared = versus_column(summary, sort_by, versus) if versus and sort_by else None
    if compared is not None:
        key = f"{sort_by}_vs_{versus}"
        columns += [
            Column(f"Δ {sort_by} vs {versus}", with_interval(4), brief),
            Column("verdict", text, key=f"{key}_verdict"),
            *(Column(f"{key}{suffix}", fixed(6), detail) for suffix in ("", "_ci_low", "_ci_high")),
        ]
    rows = []
    for i, (_, r) in enumerate(summary.iterrows()):
        rows.append(
            [
                r["rank"],
                r["model"],
                r["label"] or r["method"],
                r["budget_macs_ratio"],
                _tuned_text(r["tuned"]),
                r["macs"],
                r["macs_ratio"],
                r["at_budget"],
                (r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"]),
                r["speedup"],
                r["speedup_ci_low"],
                r["speedup_ci_high"],
                r["latency_s"],
                r["peak_memory_mb"],
                *((r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in shown),
                *(r[f"{m}{suffix}"] for m in available for suffix in ("", "_ci_low", "_ci_high")),
                r["seeds"],
                r["n_samples"],
                *((compared[i][:3], compared[i][3], *compared[i][:3]) if compared is not None else ()),
            ]
        )
    title = f"Leaderboard{f' — {experiment}' if experiment else ''}"
    notes = []
    if sort_by:
        better = "higher" if direction(sort_by) == "max" else "lower"
        notes = [
            f"Per model, best {sort_by} first ({better} is better). Rank: a method whose paired 95 % interval "
            f"of the difference in {sort_by} to the method above it contains 0 shares that method's rank — "
            "they cannot be told apart at this sample size (paired bootstrap over images × seeds).",
            "[low, high]: 95 % bootstrap interval over images × seeds; speedup: latency ratio to `full` timed "
            "interleaved in the same process, interval over the timed repeats. MACs per image, whole run, CFG "
            "half not counted. Means over seeds.",
        ]
    return Table(title, columns, rows, notes + off_budget_notes(summary) + schedule_notes(frame))


def schedule_notes(frame) -> list[str]:
    """The "Schedules that may surprise" section: one line per (model, method, configuration) whose method
    explains its schedule (``explain_schedule(row)`` on the method class, e.g. ToCa's step-weighted full-step
    interval) and says something — the schedule differs from what its parameters suggest."""
    lines = []
    for _, run in frame.iterrows():
        try:
            explain = getattr(method_class(run["method"]), "explain_schedule", None)
        except (KeyError, ValueError):  # a method this checkout does not register
            continue
        note = explain(run.to_dict()) if explain is not None else None
        if not note:
            continue
        name = {"toca": "ToCa"}.get(run["method"], run["method"])
        family = run.get("family")
        line = f"- {name} on {run['model']}{f' ({family})' if isinstance(family, str) else ''}: {note}."
        if line not in lines:
            lines.append(line)
    return ["", "Schedules that may surprise: why", *lines] if lines else []


def _primary(frame) -> str | None:
    """The primary metric the models' bundles declared (the first of ``report_metrics``), when they agree."""
    if "report_metrics" not in frame.columns:
        return None
    firsts = {r[0] for r in frame["report_metrics"] if isinstance(r, list) and r}
    return firsts.pop() if len(firsts) == 1 else None


def off_budget_notes(summary) -> list[str]:
    """The "Off budget (> 2 %): why" section: one line per configuration whose MACs are more than 2 % from
    its budget, with the runner's ``budget_note`` (why the budget field could not reach it); and the list of
    configurations interpolated at their budget, with the two runs each is interpolated between."""
    if "budget_note" not in summary.columns:
        return []
    off = [
        r
        for _, r in summary.iterrows()
        if isinstance(r["budget_note"], str) and r["budget_note"] and r.get("at_budget") != "interpolated"
    ]
    between = [r for _, r in summary.iterrows() if r.get("at_budget") == "interpolated"]
    lines = []
    if off:
        lines += [
            "",
            "Off budget (> 2 %): why",
            *(
                f"- {r['model']} {r['label'] or r['method']}: MAC ratio "
                f"{r['macs_ratio']:.3f} for a budget of {r['budget_macs_ratio']:.2f}; "
                f"{r['budget_note']}"
                for r in off
            ),
        ]
    if between:
        lines += [
            "",
            "Interpolated at the budget (no setting lands within 2 %): per image, linearly in MAC ratio",
            *(f"- {r['model']} {r['method']}: {r['budget_note']}" for r in between),
        ]
    return lines


# ------------------------------------------------------------------------------------------ paper tables


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(b, str) and b.endswith(".json") and isinstance(a, str):  # schedule paths: relative or absolute
        return Path(a).as_posix().endswith(b)
    return a == b


def config_defaults(method: str) -> dict:
    """The non-None defaults of a registered method's config (a run's params hold only what was given)."""
    try:
        config = method_class(method).Config()
    except (KeyError, ValueError):  # a method another branch registers, or one without defaults
        return {}
    return {k: v for k, v in config.model_dump().items() if v is not None}


def matches(run, match: dict) -> bool:
    """A run measures a published row when its method, effective parameters (given ∪ tuned) and budget
    agree with the row's ``match``."""
    if "method" in match and run["method"] != match["method"]:
        return False
    effective = {**config_defaults(run["method"]), **(run["params"] or {}), **(run["tuned"] or {})}
    if any(k not in effective or not _same(effective[k], v) for k, v in match.get("params", {}).items()):
        return False
    budget = match.get("budget_macs_ratio")
    return budget is None or (run["budget_macs_ratio"] is not None and _same(run["budget_macs_ratio"], budget))


def table_runs(frame, spec: PaperTable, experiment: str | None, model: str | None):
    """The runs that fill the table: those of its GPU experiment when the store has them (or ``experiment``
    names it), else those of its embedded analogue. → (runs, experiment, model, the analogue or None).
    ``model`` defaults to the table's (or the analogue's) when present, else to the experiment's only model."""
    analogue = spec.analogue
    on_gpu = spec.experiment is not None and bool((frame["experiment"] == spec.experiment).any())
    if analogue is not None and (experiment == analogue.experiment or (experiment is None and not on_gpu)):
        experiment, default = analogue.experiment, analogue.model
    else:
        analogue, experiment, default = None, experiment or spec.experiment, spec.model
    frame = frame[frame["experiment"] == experiment]
    models = sorted(frame["model"].dropna().unique())
    if model is None:
        if default in models or not models:
            model = default
        elif len(models) == 1:
            model = models[0]
        else:
            raise ValueError(
                f"model: experiment {experiment!r} has runs of {', '.join(models)}; "
                f"choose one (the paper's {spec.id} is about {spec.model})"
            )
    return frame[frame["model"] == model], experiment, model, analogue


def paper_match(row: Row, column: PaperColumn, analogue: Analogue | None) -> dict:
    """Which runs measure one cell: the column's own match (Table 5's ToCa base), the analogue's for the row
    on the embedded model, else the row's."""
    if column.match or column.key in row.column_match:
        return row.column_match[column.match or column.key]
    return (analogue.match if analogue else {}).get(row.label, row.match)


def paper_cell(runs, match: dict, column: PaperColumn, summaries: dict) -> tuple[float, float, float] | None:
    """Our value of one cell in the paper's unit, with its 95 % interval when one configuration measures it
    (over several, their mean alone): (value, low, high), None where no run matches. ``summaries``: the
    summary of each set of matching runs already made (the cells of a row share theirs)."""
    if column.metric is None or column.metric not in runs.columns or runs.empty:
        return None
    hits = runs[[matches(r, match) for _, r in runs.iterrows()]]
    hits = hits[hits[column.metric].notna()]
    if hits.empty:
        return None
    key = tuple(hits["run_id"])
    if key not in summaries:
        summaries[key] = summarise(hits)
    summary = summaries[key]
    value = float(summary[column.metric].mean()) * column.scale
    low, high = f"{column.metric}_ci_low", f"{column.metric}_ci_high"
    if len(summary) != 1 or low not in summary.columns:
        return value, float("nan"), float("nan")
    first = summary.iloc[0]
    return value, float(first[low]) * column.scale, float(first[high]) * column.scale


def _published_macs_ratio(spec: PaperTable) -> dict[str, float]:
    """Each row's published MACs over the first row's (the uncached model): comparable with an analogue's."""
    full = spec.rows[0].published.get("macs")
    return {r.label: r.published["macs"] / full for r in spec.rows if full and "macs" in r.published}


def paper_table(frame, layout: str, experiment: str | None = None, model: str | None = None) -> Table:
    """The DiffSparse paper's table ``layout`` (table1 ... table10, stages, search): every published row with
    its numbers, and ours beside them — measured on the table's own model by its GPU experiment, or on the
    embedded model of the same family by its analogue (the default when the store has no GPU runs). "—" where
    no run matches; CSV columns ``paper_<key>`` and ``ours_<key>`` (with ``_ci_low`` / ``_ci_high``)."""
    if layout not in TABLES:
        raise ValueError(f"layout: unknown {layout!r}; allowed: {', '.join(LAYOUTS)}")
    spec = TABLES[layout]
    runs, experiment, model, analogue = table_runs(frame, spec, experiment, model)
    ratios = _published_macs_ratio(spec) if analogue else {}
    columns = [Column("Method", text)]
    for c in spec.columns:
        columns.append(
            Column(f"{c.header} (paper)", times if c.key == "speedup" else fixed(c.digits), key=f"paper_{c.key}")
        )
    if ratios:
        columns.append(Column("MAC ratio (paper)", fixed(3), key="paper_macs_ratio"))
    ours = analogue.columns if analogue else spec.columns
    for c in ours:
        key = f"ours_{c.key}"
        shown = times if c.key == "speedup" else with_interval(c.digits)
        columns += [
            Column(f"{c.header} (ours)", shown, ("md", "tex")),
            *(Column(f"{key}{suffix}", fixed(6), ("csv",)) for suffix in ("", "_ci_low", "_ci_high")),
        ]
    rows, summaries = [], {}
    absent = analogue.absent if analogue else {}
    for row in spec.rows:
        cells = [row.label, *(row.published.get(c.key) for c in spec.columns)]
        if ratios:
            cells.append(ratios.get(row.label))
        for c in ours:
            value = None if row.label in absent else paper_cell(runs, paper_match(row, c, analogue), c, summaries)
            cells += [value, *(value or (None, None, None))]
        rows.append(cells)
    where = (
        f"the embedded analogue: experiment {experiment!r} on {model!r}, the same comparison measured against "
        "the uncached model"
        if analogue
        else f"experiment {experiment!r}, model {model!r}"
    )
    notes = [
        f"Paper: {spec.source}. Ours: {where}; {len(runs)} runs in the store; [low, high]: 95 % bootstrap "
        "interval over images × seeds (FID: over the sample set).",
        *([spec.note] if spec.note and not analogue else []),
        *(f"{label}: {why}." for label, why in absent.items()),
    ]
    if not analogue and spec.no_analogue:
        notes.append(f"No embedded analogue: {spec.no_analogue}.")
    elif not analogue and spec.analogue and runs.empty:
        notes.append(f"No GPU runs here; the embedded analogue fills this table: dsbench reproduce --only {spec.id}.")
    return Table(f"{spec.title} ({spec.id})", columns, rows, notes)


# ------------------------------------------------------------------------------------ ablations decided

TRAINING_SEEDS = ("condition_seed", "noise_seed")  # what a retraining with another seed changes


def _training_config(schedule: Any) -> dict:
    """The training settings a DiffSparse schedule file records (``meta.config``, written by the trainer)."""
    path = Path(str(schedule))
    try:
        return dict(json.loads(path.read_text())["meta"]["config"])
    except FileNotFoundError:
        raise ValueError(
            f"schedule: {path} is not there; the ablations layout reads each schedule's training "
            "settings (run it from the folder the experiment ran in)"
        ) from None
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"schedule: {path} records no training settings (meta.config); only schedules written "
            "by `dsbench train diffsparse` can be grouped into ablations"
        ) from None


def _claim_for(settings: dict, bases: list[dict]) -> tuple[Claim, dict] | None:
    """The paper claim a trained configuration tests, and the base it is compared with: the base (the paper's
    choice of every claimed field) it differs from in exactly one claimed field and nothing else."""
    for base in bases:
        differing = [k for k in set(settings) | set(base) if settings.get(k) != base.get(k)]
        claim = next((c for c in CLAIMS if differing == [c.field]), None)
        if claim is not None:
            return claim, base
    return None


def _signed(value: float) -> str:
    """+0.0035, -2.1e-05, 0: a difference with its sign, small ones in three significant digits."""
    return "0" if value == 0 else f"{value:+.4f}" if abs(value) >= 1e-4 else f"{value:+.2e}"


def _ablation_verdict(differences: list[float], interval: tuple[float, float], lower_better: bool) -> str:
    if all(d == 0 for d in differences):
        return "cannot be separated (identical outputs)"
    if not stats.excludes_zero(interval):
        return "cannot be separated at this size"
    worse = (np.mean(differences) > 0) == lower_better
    return "reproduces" if worse else "does not reproduce (the variant is better)"


def ablations(frame, experiment: str | None = None, metric: str | None = None) -> Table:
    """The DiffSparse ablations decided, one row per (paper claim, variant): the variant's difference to the
    paper's setting in ``metric`` (default: the model's primary metric) per training seed — a paired bootstrap
    over the evaluation images × sampling seeds of the two schedules trained with the same seed — and over the
    training seeds the mean with its Student-t 95 % interval, which decides the verdict. Schedules are grouped
    by the training settings they record, so any store of DiffSparse runs works."""
    frame = _select(frame, experiment)
    runs = frame[frame["method"] == "diffsparse"]
    if runs.empty:
        raise ValueError("layout ablations: no diffsparse runs in the selection")
    metric = _compared_metric(runs, metric)
    trained: dict[str, dict] = {}  # settings without seeds → {"settings", "seeds": {seed: summary row}}
    for row in summarise(runs).to_dict("records"):
        config = _training_config((row["params"] or {}).get("schedule"))
        settings = {k: v for k, v in config.items() if k not in TRAINING_SEEDS}
        seed = tuple(config.get(k) for k in TRAINING_SEEDS)
        trained.setdefault(_key(settings), {"settings": settings, "seeds": {}})["seeds"][seed] = row
    bases = [g["settings"] for g in trained.values() if all(g["settings"].get(c.field) == c.chosen for c in CLAIMS)]
    lower_better = direction(metric) != "max"
    rows, unmatched, stale = [], [], False
    for group in trained.values():
        if group["settings"] in bases:
            continue
        found = _claim_for(group["settings"], bases)
        if found is None:
            unmatched.append(group)
            continue
        claim, base_settings = found
        base = trained[_key(base_settings)]["seeds"]
        seeds = sorted(set(group["seeds"]) & set(base), key=str)
        paired = [
            paired_difference(group["seeds"][s]["_units"].get(metric), base[s]["_units"].get(metric)) for s in seeds
        ]
        if not seeds or any(p is None for p in paired):
            unmatched.append(group)
            stale |= bool(seeds)
            continue
        differences = [p[0] for p in paired]
        interval = stats.replicate_mean_ci(differences) if len(paired) > 1 else paired[0][1:]
        value = setting_text(group["settings"][claim.field])
        published = (
            f"{claim.published.get(setting_text(claim.chosen), float('nan')):.2f} → "
            f"{claim.published.get(value, float('nan')):.2f}"
        )
        macs = np.mean([group["seeds"][s]["macs_ratio"] for s in seeds])
        rows.append(
            [
                claim.source.split(", ")[-1],
                claim.text,
                f"{claim.field} = {value}",
                published,
                len(seeds),
                macs,
                (float(np.mean(differences)), *interval),
                float(np.mean(differences)),
                *interval,
                ", ".join(map(_signed, differences)),
                _ablation_verdict(differences, interval, lower_better),
            ]
        )
    if not rows:
        why = (
            f"their rows have no per-image {metric} values (stored before they were kept: rerun with --force)"
            if stale
            else "no run differs from the paper's setting in exactly one ablated field "
            f"({', '.join(c.field for c in CLAIMS)}) with the same training seed"
        )
        raise ValueError(f"layout ablations: nothing to decide: {why}")
    key = f"{metric}_difference"
    columns = [
        Column("Paper", text, key="source"),
        Column("Claim", text, key="claim"),
        Column("Variant", text, key="variant"),
        Column("Paper FID (chosen → variant)", text, key="paper_fid"),
        Column("Training seeds", text, key="training_seeds"),
        Column("MAC ratio", fixed(3), key="macs_ratio"),
        Column(f"Δ {metric} (variant − chosen)", with_interval(4), ("md", "tex")),
        *(Column(f"{key}{suffix}", fixed(6), ("csv",)) for suffix in ("", "_ci_low", "_ci_high")),
        Column("Δ per training seed", text, key="per_seed"),
        Column("Verdict", text, key="verdict"),
    ]
    better = "higher" if direction(metric) == "max" else "lower"
    notes = [
        f"Each variant changes one training setting of the paper's choice ({better} {metric} is better). "
        "Δ per training seed: the two schedules trained with that seed, evaluated on the same images and "
        "sampling seeds; Δ [low, high]: mean over the training seeds with its Student-t 95 % interval "
        "(one training seed: the paired bootstrap over images × sampling seeds).",
        "reproduces: the paper's choice is better at 95 %; cannot be separated: the interval contains 0.",
    ]
    chosen = [str(r["label"]) for g in trained.values() if g["settings"] in bases for r in g["seeds"].values()]
    notes.append(f"The paper's choice (every ablated field as the paper sets it): {', '.join(sorted(chosen))}.")
    others = sorted(str(r["label"]) for g in unmatched for r in g["seeds"].values())
    if others:
        notes.append(f"Not a paper ablation, or no training seed shared with the paper's choice: {', '.join(others)}.")
    return Table(f"DiffSparse ablations decided{f' — {experiment}' if experiment else ''}", columns, rows, notes)


# ---------------------------------------------------------------------------------------- sample sizes


def _count(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:,.0f}"


def sample_size(frame, experiment: str | None = None, metric: str | None = None) -> Table:
    """How many evaluation images (× seeds) would separate each pair of neighbours of the leaderboard ranking:
    their paired difference in ``metric`` with its interval now, and n × (half-width / |difference|)² — the
    size at which the interval would exclude 0 if the difference stayed as measured. What eval sizes and seeds
    are chosen from."""
    frame = _select(frame, experiment)
    metric = _compared_metric(frame, metric)
    rows = []
    for (model, budget), part in _rankings(ranked(at_budget(summarise(frame)), metric)):
        records = part.to_dict("records")  # best first, as ranked sorted them
        for upper, lower in zip(records, records[1:]):
            paired = paired_difference(lower["_units"].get(metric), upper["_units"].get(metric))
            if paired is None:
                continue
            units = len(lower["_units"][metric][0])
            needed = stats.units_to_separate(paired[0], paired[1:], units)
            rows.append(
                [
                    model,
                    budget,
                    upper["label"] or upper["method"],
                    lower["label"] or lower["method"],
                    paired,
                    *paired,
                    units,
                    "yes" if stats.excludes_zero(paired[1:]) else "no",
                    needed,
                ]
            )
    key = f"{metric}_difference"
    columns = [
        Column("Model", text, key="model"),
        Column("Budget", fixed(2), key="budget_macs_ratio"),
        Column("Better", text, key="better"),
        Column("Next", text, key="next"),
        Column(f"Δ {metric} (next − better)", with_interval(4), ("md", "tex")),
        *(Column(f"{key}{suffix}", fixed(6), ("csv",)) for suffix in ("", "_ci_low", "_ci_high")),
        Column("Units now", text, key="units"),
        Column("Separated", text, key="separated"),
        Column("Units to separate (≈)", _count, key="units_needed"),
    ]
    notes = [
        f"Neighbours of the {metric} ranking per model and budget. Units: images × seeds. The estimate assumes "
        "the measured difference is the true one; a difference that is really 0 is never separated."
    ]
    return Table(f"Sample size to separate neighbours{f' — {experiment}' if experiment else ''}", columns, rows, notes)


def table(frame, layout: str = "leaderboard", **options) -> Table:
    """``dsbench table``: the leaderboard, the ablations decided, the sample-size plan or one paper layout."""
    if layout == "leaderboard":
        return leaderboard(frame, **options)
    if layout == "ablations":
        return ablations(frame, **options)
    if layout == "sample-size":
        return sample_size(frame, **options)
    return paper_table(frame, layout, **options)


# ------------------------------------------------------------------------------------------------ plots


def _figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot's global state (safe in workers and tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def pareto_front(cost, quality, higher_is_better: bool) -> np.ndarray:
    """Mask of the points no other point beats: cost no higher and quality no worse, one of them strictly."""
    cost = np.asarray(cost, dtype=float)
    quality = np.asarray(quality, dtype=float) * (1 if higher_is_better else -1)
    front = np.zeros(len(cost), dtype=bool)
    for i in range(len(cost)):
        if np.isnan(cost[i]) or np.isnan(quality[i]):
            continue
        better = (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        front[i] = not better.any()
    return front


def _spread_labels(ax, x, y, names, min_gap_px: float = 11.0) -> None:
    """Annotate points so that labels do not overlap: labels of points close in x are pushed apart vertically
    (in screen pixels), each joined to its point by a thin line when moved."""
    fig = ax.figure
    fig.canvas.draw()  # the axes' final limits and scales
    shown = [(xi, yi, n) for xi, yi, n in zip(x, y, names) if np.isfinite(xi) and np.isfinite(yi)]
    if not shown:
        return
    points = ax.transData.transform([(xi, yi) for xi, yi, _ in shown])
    order = np.argsort(points[:, 1])
    placed: list[tuple[float, float]] = []
    for k in order:
        px, py = points[k]
        ly = py
        while any(abs(ly - qy) < min_gap_px and abs(px - qx) < 120 for qx, qy in placed):
            ly += min_gap_px
        placed.append((px, ly))
        target = ax.transData.inverted().transform((px + 5, ly + 3))
        ax.annotate(
            str(shown[k][2]),
            (shown[k][0], shown[k][1]),
            xytext=target,
            textcoords="data",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"} if ly - py > 1 else None,
        )


def _interval_errors(values, low, high) -> np.ndarray | None:
    """matplotlib's asymmetric error bars from interval columns (None when no row has an interval)."""
    low, high = (np.asarray(v, dtype=float) for v in (low, high))
    if np.all(np.isnan(low)) or np.all(np.isnan(high)):
        return None
    values = np.asarray(values, dtype=float)
    return np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0, posinf=0.0).clip(min=0)


def _plot_metric(frame, metric: str | None) -> str:
    """The quality metric a plot shows: the one asked for, else the models' primary one, else the first of
    :data:`SORT_PREFERENCE` measured."""
    primary = _primary(frame)
    metric = metric or (primary if primary in metric_columns(frame) else None) or default_sort_metric(frame)
    if metric is None or metric not in frame.columns:
        raise ValueError(f"metric: {metric!r} is not in the store; available: {', '.join(metric_columns(frame))}")
    return metric


def _sample_size(runs) -> str:
    return f"{int(runs['n_samples'].max())} images × {int(runs['seeds'].max())} seed(s)"


def _quality_axes(ax, values, metric: str, xlabel: str, title: str) -> None:
    """Labels, title and grid of a quality-vs-cost panel; symlog quality (0 stays on it) where values span
    more than a decade."""
    values = np.asarray(values, dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / positive.min() > 10:
        ax.set_yscale("symlog", linthresh=float(positive.min()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} ({'higher' if direction(metric) == 'max' else 'lower'} is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _experiments(runs) -> str:
    names = sorted({str(e) for e in runs["experiment"].dropna()}) if "experiment" in runs.columns else []
    return ", ".join(names) or "—"


def _infinite_to_edge(ax, values: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``values`` with ±inf moved to the top / bottom edge of the quality axis (which is widened to hold them),
    and the indices so moved — infinite metrics (PSNR of ``full`` against itself) are drawn, never dropped."""
    values = np.asarray(values, dtype=float)
    moved = [i for i, v in enumerate(values) if np.isinf(v)]
    if not moved:
        return values, []
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    span = (hi - lo) or max(abs(hi), 1.0)
    log = ax.get_yscale() != "linear"
    top = hi * 2.0 if log and hi > 0 else hi + 0.15 * span
    bottom = lo - 0.15 * span if not log or lo <= 0 else lo / 2.0
    drawn = np.where(values == np.inf, top, np.where(values == -np.inf, bottom, values))
    margin = 0.06 * (top - bottom)
    ax.set_ylim(bottom - (margin if values.min() == -np.inf or not log else 0), top + margin * (4 if log else 1))
    return drawn, moved


def pareto_plot(frame, path: str | Path, metric: str | None = None, experiment: str | None = None) -> Path:
    """Quality ``metric`` against MAC ratio (left) and against the speedup measured interleaved with ``full``
    in the same process (right; never absolute seconds, which differ between processes), one row of panels per
    model, one point per configuration with its 95 % intervals as error bars; the Pareto front drawn through
    its ringed points. ``full`` is the reference point at MAC ratio 1 and speedup 1× (a star, with a dotted
    line at 1); an infinite value (PSNR of ``full`` against itself) is drawn at the edge of the quality axis
    with a note. The quality axis is symlog (0 stays on it) where the values span more than a decade. The
    figure's title states the experiment, each row's its model and sample size."""
    frame = _select(frame, experiment)
    metric = _plot_metric(frame, metric)
    summary = summarise(frame)
    models = sorted(summary["model"].unique())
    fig = _figure(12, 4.6 * len(models) + 0.4)
    axes = fig.subplots(len(models), 2, squeeze=False)
    higher = direction(metric) == "max"
    fig.suptitle(
        f"{metric} vs cost — experiment {_experiments(summary)} — ★ full: the reference (MAC ratio 1, speedup 1×); "
        "speedup timed interleaved with full in one process",
        fontsize=10,
    )
    for row, model in zip(axes, models):
        runs = summary[summary["model"] == model]
        is_full = (runs["method"] == "full").to_numpy()
        y = runs[metric].astype(float).to_numpy()
        y_err = _interval_errors(y, runs[f"{metric}_ci_low"], runs[f"{metric}_ci_high"])
        for ax, cost, xlabel, cheaper_is_lower in (
            (row[0], "macs_ratio", "MAC ratio to full (lower is cheaper)", True),
            (row[1], "speedup", "speedup over full, timed interleaved (higher is faster)", False),
        ):
            x = runs[cost].astype(float).to_numpy()
            x = np.where(is_full, 1.0, x)  # full is the reference by definition (its own timing is noise)
            x_err = _interval_errors(x, runs["speedup_ci_low"], runs["speedup_ci_high"]) if cost == "speedup" else None
            _quality_axes(ax, y, metric, xlabel, f"{model} — {_sample_size(runs)}, bars: 95 % intervals")
            drawn, moved = _infinite_to_edge(ax, y)
            method = ~is_full
            ax.errorbar(
                x[method],
                drawn[method],
                xerr=None if x_err is None else x_err[:, method],
                yerr=None if y_err is None else y_err[:, method],
                fmt="o",
                ms=4,
                color="tab:blue",
                ecolor="0.7",
                elinewidth=0.8,
                zorder=2,
                label="configuration",
            )
            if is_full.any():
                ax.scatter(x[is_full], drawn[is_full], marker="*", s=160, color="black", zorder=4, label="full")
                ax.axvline(1.0, color="0.4", lw=0.8, ls=":", zorder=0)
            front = pareto_front(x if cheaper_is_lower else -x, y, higher)
            ax.scatter(
                x[front], drawn[front], s=90, facecolors="none", edgecolors="tab:red", zorder=3, label="Pareto front"
            )
            order = np.argsort(x[front])
            ax.plot(x[front][order], drawn[front][order], color="tab:red", lw=1, zorder=1)
            for i in moved:  # a short mark at the point, the explanation in the panel's title
                ax.annotate(
                    "+∞" if y[i] > 0 else "−∞",
                    (x[i], drawn[i]),
                    xytext=(-24, -3),
                    textcoords="offset points",
                    fontsize=8,
                    color="0.2",
                )
            if moved:
                names = ", ".join(str(runs.iloc[i]["label"] or runs.iloc[i]["method"]) for i in moved)
                sign, edge = ("+", "top") if y[moved[0]] > 0 else ("−", "bottom")
                ax.set_title(
                    f"{ax.get_title()}\n{names}: {metric} = {sign}∞ (identical to the teacher), "
                    f"drawn at the {edge} edge",
                    fontsize=9,
                )
            ax.legend(fontsize=7, loc="best")
            labels = [("" if f else n) for f, n in zip(is_full, runs["label"].fillna(runs["method"]))]
            _spread_labels(ax, x, drawn, labels)
    return _save(fig, path)


def curves_plot(frame, path: str | Path, metric: str | None = None, experiment: str | None = None) -> Path:
    """Quality–compute curves: ``metric`` against MAC ratio (left) and against the speedup timed interleaved
    with ``full`` (right), one row per model, one line per method through all its measured configurations
    (every budget, and the runs that bracket a budget from above) with its 95 % interval as a band; the
    quality axis is symlog where values span more than a decade. Methods are told apart by a legend."""
    import matplotlib

    frame = _select(frame, experiment)
    metric = _plot_metric(frame, metric)
    summary = summarise(frame)
    models = sorted(summary["model"].unique())
    methods = sorted(summary["method"].unique())
    # the strong tab20 colours first, the pale ones only past ten methods; markers tell neighbours apart too
    colours = {m: matplotlib.colormaps["tab20"]((2 * i) % 20 + (2 * i) // 20) for i, m in enumerate(methods)}
    markers = {m: "osD^vPX*<>"[i % 10] for i, m in enumerate(methods)}
    fig = _figure(13, 4.6 * len(models) + 0.4)
    axes = fig.subplots(len(models), 2, squeeze=False)
    fig.suptitle(
        f"{metric} vs cost per method — experiment {_experiments(summary)} — speedup timed interleaved with full "
        "in one process; ±∞ values drawn at the axis edge",
        fontsize=10,
    )
    for row, model in zip(axes, models):
        runs = summary[summary["model"] == model]
        values = runs[metric].astype(float).to_numpy()
        for ax, cost, xlabel in (
            (row[0], "macs_ratio", "MAC ratio to full (lower is cheaper)"),
            (row[1], "speedup", "speedup over full, timed interleaved (higher is faster)"),
        ):
            _quality_axes(
                ax, values, metric, xlabel, f"{model} — {_sample_size(runs)} per point, bands: 95 % intervals"
            )
            drawn, _ = _infinite_to_edge(ax, values)
            edge = dict(zip(runs.index, drawn))
            for method, points in runs.groupby("method"):
                points = points.sort_values(cost)
                x = points[cost].astype(float).to_numpy()
                x = np.where(points["method"] == "full", 1.0, x)
                y = np.array([edge[i] for i in points.index])
                low = points[f"{metric}_ci_low"].astype(float).to_numpy()
                high = points[f"{metric}_ci_high"].astype(float).to_numpy()
                ax.plot(
                    x,
                    y,
                    "-",
                    marker=markers[method],
                    ms=4,
                    lw=1.2,
                    color=colours[method],
                    label=f"{method} ({len(points)})",
                )
                if np.isfinite(low).any():
                    ax.fill_between(x, low, high, color=colours[method], alpha=0.15, lw=0)
        row[1].legend(
            fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method (points)", title_fontsize=7
        )
    return _save(fig, path)


def decision_map(artifacts: str | Path) -> tuple[np.ndarray, list[str]]:
    """The per-(step, layer) kept-fraction map of a run (T × L) and its layer names, from the run's artifacts:
    ``decisions.npy`` (with layer names in ``decisions.json``) or ``decisions.json`` alone, which holds either a
    ``kept_fraction`` grid or a serialised Schedule (codes, k, meta.n_tokens; methods/schedule.py)."""
    folder = Path(artifacts)
    info_path, array_path = folder / "decisions.json", folder / "decisions.npy"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if array_path.exists():
        grid = np.load(array_path).astype(float)
    elif "kept_fraction" in info:
        grid = np.asarray(info["kept_fraction"], dtype=float)
    elif "codes" in info:
        grid = _schedule_fraction(info)
    else:
        raise ValueError(f"artifacts: {folder} holds no decisions map (decisions.npy or decisions.json)")
    layers = list(info.get("layers") or [f"layer{i}" for i in range(grid.shape[1])])
    if grid.ndim != 2 or grid.shape[1] != len(layers):
        raise ValueError(f"artifacts: decisions map of shape {grid.shape} does not match {len(layers)} layers")
    return grid, layers


def _schedule_fraction(info: dict) -> np.ndarray:
    n_tokens = info["meta"]["n_tokens"]
    return np.array(
        [
            [
                1.0 if code == Kind.FULL else k / n_tokens[ell] if code == Kind.TOPK else 0.0
                for ell, (code, k) in enumerate(zip(codes, ks))
            ]
            for codes, ks in zip(info["codes"], info["k"])
        ]
    )


def _module_of(layer: str) -> str:
    stream, _, module = layer.partition(".")
    stream = stream.rstrip("0123456789")
    return module if stream == "main" else f"{stream}.{module}"


MODULE_NAMES = {
    "sa": "self-attention",
    "ca": "cross-attention",
    "attn": "attention",
    "mlp": "MLP",
    "img_mlp": "image MLP",
    "txt_mlp": "text MLP",
}


def _module_text(module: str) -> str:
    stream, _, name = module.rpartition(".")
    what = MODULE_NAMES.get(name, name)
    return f"{module} ({stream + ' ' if stream else ''}{what})"


def _config_text(config: Any, width: int = 110) -> str:
    """A run's resolved configuration, wrapped at ``width`` characters (two lines at most): scalars only
    (schedules and level grids are left to the artifacts), floats in 4 significant digits."""
    import textwrap

    if not isinstance(config, dict) or not config:
        return "defaults"
    items = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in config.items()
        if v is not None and not isinstance(v, (list, dict))
    ]
    return "\n".join(textwrap.wrap(", ".join(items) or "defaults", width, max_lines=2, placeholder=" …"))


def heatmap(
    grid: np.ndarray,
    layers: list[str],
    path: str | Path,
    title: str | None = None,
    *,
    model: str | None = None,
    method: str | None = None,
    config: dict | None = None,
    experiment: str | None = None,
    n_samples: int | None = None,
) -> Path:
    """One panel per module (sa: self-attention, ca: cross-attention, mlp: MLP, ...): layer (block, its
    module names on the axis) × step sparsity — the fraction of tokens reused from the cache, 1 − the kept
    fraction — the scale of the paper's Figure 3, step 0 omitted as there (it is always computed in full);
    integer step ticks. The title: ``title`` (default "<method> on <model>"), the run's configuration and its
    experiment and sample size where given."""
    from matplotlib.ticker import MaxNLocator

    modules = list(dict.fromkeys(_module_of(name) for name in layers))
    fig = _figure(max(4.2 * len(modules), 7.0), 4.2)
    if modules:
        axes = fig.subplots(1, len(modules), squeeze=False)[0]
    else:  # a model-transforming method (SparseDiT) runs its own model: the engine decides no layer
        axes = []
        note = fig.subplots()
        note.axis("off")
        note.text(0.5, 0.5, "no per-layer decisions: the method runs its own (pruned) model", ha="center")
    steps = np.arange(1, grid.shape[0])
    image = None
    for ax, module in zip(axes, modules):
        columns = [i for i, name in enumerate(layers) if _module_of(name) == module]
        sparsity = 1.0 - grid[1:, columns].T
        image = ax.imshow(
            sparsity,
            aspect="auto",
            origin="lower",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            interpolation="nearest",
            extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(columns) - 0.5) if len(steps) else None,
        )
        ax.set_title(f"{_module_text(module)}: {len(columns)} layers", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(columns) <= 16:  # every layer named
            ax.set_yticks(range(len(columns)), [layers[c] for c in columns], fontsize=7)
            ax.set_ylabel(f"layer ({module} of each block)")
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(f"block (layer <stream><block>.{module})")
        ax.set_xlabel("step i (0, always full, omitted)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="sparsity (fraction of tokens reused)")
    head = title or " on ".join(str(v) for v in (method, model) if v) or "decisions"
    width = int(fig.get_figwidth() * 12)
    lines = [head, f"config: {_config_text(config, width)}"] if config is not None else [head]
    about = [
        *([f"model {model}"] if model and model not in head else []),
        *([f"experiment {experiment}"] if experiment else []),
        *([f"{n_samples} evaluation images"] if n_samples else []),
    ]
    if about:
        lines.append(" · ".join(about))
    fig.suptitle("\n".join(lines), fontsize=10)
    return _save(fig, path)


def _pick(frame, experiment: str | None, runs: list[str] | None):
    frame = _select(frame, experiment)
    if runs:
        unknown = [r for r in runs if not (frame["run_id"] == r).any() and not (frame["label"] == r).any()]
        if unknown:
            raise ValueError(f"runs: {unknown[0]!r} is neither a run_id nor a label in the store")
        frame = frame[frame["run_id"].isin(runs) | frame["label"].isin(runs)]
    return frame


def heatmaps(frame, out_dir: str | Path, experiment: str | None = None, runs: list[str] | None = None) -> list[Path]:
    """Per-module step×layer sparsity maps (the paper's Figure 3) of every selected run that has a
    decisions map; one PNG per run, named by its label and run_id."""
    paths = []
    for _, run in _pick(frame, experiment, runs).iterrows():
        if not run["artifacts"] or not any(
            (Path(run["artifacts"]) / f).exists() for f in ("decisions.npy", "decisions.json")
        ):
            continue
        grid, layers = decision_map(run["artifacts"])
        name = re.sub(r"[^\w.=-]+", "-", f"{run['model']}_{run['label'] or run['method']}_{run['run_id'][:8]}")
        config = run.get("config")
        paths.append(
            heatmap(
                grid,
                layers,
                Path(out_dir) / f"heatmap_{name}.png",
                f"{run['label'] or run['method']} on {run['model']} (seed {run['seed']})",
                model=run["model"],
                method=run["method"],
                config=config if isinstance(config, dict) else {**(run["params"] or {}), **(run["tuned"] or {})},
                experiment=run["experiment"],
                n_samples=int(run["n_samples"]),
            )
        )
    return paths


SAMPLE_COLUMNS = 3  # panels per row of a sample figure: about 1800 px wide, each panel at its native size


def _sample_order(runs):
    """``full`` first, then by MAC ratio, most expensive first."""
    return runs.assign(_full=runs["method"] != "full").sort_values(["_full", "macs_ratio"], ascending=[True, False])


def _draw_samples(fig, runs, heading: str, columns: int = SAMPLE_COLUMNS) -> None:
    """Each run's samples.png — the teacher's images (the uncached model, same seeds) in its top row, the run's
    below, the rows labelled "teacher" and with the method's name on the left — in rows of ``columns`` panels under
    ``heading``; each panel titled with the run's label, MAC ratio and speedup over ``full`` (timed
    interleaved)."""
    from PIL import Image

    runs = _sample_order(runs)
    n_cols = max(1, min(columns, len(runs)))
    n_rows = -(-len(runs) // n_cols)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, run) in zip(axes.flat, runs.iterrows()):
        picture = np.asarray(Image.open(Path(run["artifacts"]) / "samples.png").convert("RGB"))
        height = picture.shape[0]
        name = str(run["label"] or run["method"])
        ax.axis("on")
        ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([height * 0.25, height * 0.75], ["teacher", str(run["method"])])
        ax.tick_params(axis="y", length=0, labelsize=8)
        for spine in ax.spines.values():
            spine.set_visible(False)
        speed = run.get("speedup")
        cost = (
            "the reference (= teacher)"
            if run["method"] == "full"
            else f"MACs ×{float(run['macs_ratio']):.2f}"
            + (f", {float(speed):.2f}× speedup" if isinstance(speed, (int, float)) and np.isfinite(speed) else "")
        )
        ax.set_title(f"{name}: {cost}", fontsize=8)
    fig.suptitle(heading, fontsize=10)


def _samples_heading(runs, model: str) -> str:
    n = int(runs["n_samples"].max()) if "n_samples" in runs.columns and runs["n_samples"].notna().any() else None
    shown = f"first {min(n, 8)} of {n} evaluation images" if n else "the first evaluation images"
    return (
        f"{model} — experiment {_experiments(runs)} — {shown}\n"
        "each panel: top row teacher (uncached model, same seeds), bottom row the method; "
        "speedup timed interleaved with full"
    )


def _with_samples(runs):
    return runs[[isinstance(a, str) and bool(a) and (Path(a) / "samples.png").exists() for a in runs["artifacts"]]]


def sample_figure(runs, path: str | Path, model: str | None = None, columns: int = SAMPLE_COLUMNS) -> Path | None:
    """One model's runs (store rows or summary rows) as a sample figure (see :func:`_draw_samples`); None when
    no run has a samples.png. What ``dsbench quickstart`` writes to grids/<model>.png."""
    runs = _with_samples(runs)
    if runs.empty:
        return None
    model = model or ", ".join(sorted({str(m) for m in runs["model"]}))
    n_rows = -(-len(runs) // max(1, min(columns, len(runs))))
    fig = _figure(5.2 * max(1, min(columns, len(runs))), 1.75 * n_rows + 0.7)
    _draw_samples(fig, runs, _samples_heading(runs, model), columns)
    return _save(fig, path)


def grid_compare(
    frame, path: str | Path, experiment: str | None = None, runs: list[str] | None = None, seed: int | None = None
) -> Path:
    """The selected runs' sample grids (see :func:`_draw_samples`): one block per model in rows of
    :data:`SAMPLE_COLUMNS` panels, titled by model, experiment and sample size; ``full`` first.
    ``seed`` keeps the runs of one seed (default: each configuration's first run)."""
    frame = _pick(frame, experiment, runs)
    if seed is not None:
        frame = frame[frame["seed"] == seed]
    picked = _with_samples(summarise(frame) if not runs else frame)
    if picked.empty:
        raise ValueError("runs: no selected run has a samples.png in its artifacts directory")
    models = sorted(picked["model"].unique())
    blocks = [picked[picked["model"] == m] for m in models]
    n_cols = max(min(SAMPLE_COLUMNS, len(b)) for b in blocks)
    heights = [1.75 * -(-len(b) // min(SAMPLE_COLUMNS, len(b))) + 0.7 for b in blocks]
    fig = _figure(5.2 * n_cols, sum(heights))
    subfigures = fig.subfigures(len(models), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, model, block in zip(subfigures, models, blocks):
        _draw_samples(sub, block, _samples_heading(block, model), n_cols)
    return _save(fig, path)
