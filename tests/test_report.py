"""Reports from a store filled with synthetic rows (written through Store.put, as the runner writes them)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from dsbench import report
from dsbench.reference_results import TABLES, schedule_path
from dsbench.store import Store

MACS_FULL = 2.86e12


def run_row(
    run_id,
    method,
    seed,
    *,
    params=None,
    tuned=None,
    budget=None,
    model="pixart-alpha-256",
    experiment="table1_pixart",
    macs_ratio=1.0,
    speedup=1.0,
    artifacts=None,
    **metrics,
):
    return {
        "run_id": run_id,
        "experiment": experiment,
        "model": model,
        "method": method,
        "label": method if not params else f"{method}_" + "_".join(f"{k}{v}" for k, v in params.items()),
        "params": params or {},
        "tuned": tuned or {},
        "budget_macs_ratio": budget,
        "sampler": "dpm-solver++",
        "steps": 20,
        "guidance": 4.5,
        "eval_set": "coco-30k",
        "n_samples": 8,
        "seed": seed,
        "code_version": "test",
        "macs": MACS_FULL * macs_ratio,
        "macs_full": MACS_FULL,
        "macs_ratio": macs_ratio,
        "macs_attention": 1e9,
        "latency_s": 1.0 / speedup,
        "latency_full_s": 1.0,
        "speedup": speedup,
        "peak_memory_mb": 100.0,
        "artifacts": artifacts,
        **metrics,
    }


@pytest.fixture
def store(tmp_path):
    """full, toca (tuned ratio), fora N=2, 50% steps and two DiffSparse schedules, two seeds each."""
    store = Store(tmp_path / "results.db")
    configs = [
        ("full", None, 1.0, 1.0, 20.0, 16.3, 0.0),
        ("toca", {"ratio": 0.3}, 0.57, 1.7, 21.0, 16.4, 0.10),
        ("fora", {"interval": 2}, 0.50, 1.6, 23.0, 16.1, 0.20),
        ("steps", {"fraction": 0.5}, 0.50, 1.9, 30.0, 15.8, 0.30),
        ("diffsparse", {"schedule": "/abs/" + schedule_path("pixart-alpha-256", "r43")}, 0.57, 1.72, 19.5, 16.4, 0.08),
        ("diffsparse", {"schedule": schedule_path("pixart-alpha-256", "r54")}, 0.46, 1.9, 22.0, 16.2, 0.12),
    ]
    for n, (method, params, ratio, speedup, fid, clip, lpips) in enumerate(configs):
        for seed in (0, 1):
            artifacts = tmp_path / f"run{n}_{seed}"
            artifacts.mkdir()
            write_artifacts(artifacts, value=n)
            store.put(
                run_row(
                    f"r{n}s{seed}",
                    method,
                    seed,
                    params=params,
                    macs_ratio=ratio,
                    speedup=speedup,
                    budget=None if method == "full" else 0.57,
                    artifacts=str(artifacts),
                    fid=fid + seed,
                    clip_score_legacy=clip,
                    lpips_alex=lpips + 0.01 * seed,
                )
            )
    yield store
    store.close()


def write_artifacts(folder, value):
    from PIL import Image

    Image.fromarray(np.full((16, 24, 3), 10 * value, dtype=np.uint8)).save(folder / "samples.png")
    steps, layers = 4, ["main0.sa", "main0.ca", "main0.mlp", "main1.sa", "main1.ca", "main1.mlp"]
    np.save(folder / "decisions.npy", np.linspace(0, 1, steps * len(layers)).reshape(steps, len(layers)))
    (folder / "decisions.json").write_text(json.dumps({"layers": layers}))


def test_leaderboard_rows_sorted_by_quality_with_mac_ratio_and_speedup(store):
    table = report.leaderboard(store.frame())
    assert {"MAC ratio", "Speedup", "lpips_alex", "fid", "Seeds"} <= set(table.headers("md"))
    records = table.records()
    assert {
        "macs_ratio",
        "speedup",
        "speedup_ci_low",
        "lpips_alex",
        "lpips_alex_ci_low",
        "lpips_alex_ci_high",
        "fid",
        "fid_ci_high",
        "rank",
        "seeds",
    } <= set(records[0])
    lpips = [r["lpips_alex"] for r in records]
    assert lpips == sorted(lpips) and len(records) == 6  # one row per configuration, best first
    assert lpips[0] == pytest.approx(0.005)  # mean over the two seeds
    assert all(r["seeds"] == 2 for r in records)
    toca = next(r for r in records if r["method"] == "toca_ratio0.3")
    assert toca["speedup"] == pytest.approx(1.7) and toca["macs_ratio"] == 0.57
    by_fid = report.leaderboard(store.frame(), sort_by="fid")
    assert by_fid.records()[0]["method"].startswith("diffsparse")


def test_leaderboard_averages_only_the_newest_code_version_of_a_configuration(store):
    """Rows of an older code version stay in the store but are never averaged with the new ones."""
    stale = run_row("old", "toca", 0, params={"ratio": 0.3}, budget=0.57, macs_ratio=0.57, lpips_alex=0.9)
    store.put({**stale, "code_version": "older", "created_at": 1.0})
    toca = next(r for r in report.leaderboard(store.frame()).records() if r["method"] == "toca_ratio0.3")
    assert toca["lpips_alex"] == pytest.approx(0.105) and toca["seeds"] == 2
    newer = run_row("new", "toca", 0, params={"ratio": 0.3}, budget=0.57, macs_ratio=0.57, lpips_alex=0.4)
    store.put({**newer, "code_version": "newer"})
    toca = next(r for r in report.leaderboard(store.frame()).records() if r["method"] == "toca_ratio0.3")
    assert toca["lpips_alex"] == pytest.approx(0.4) and toca["seeds"] == 1


def test_leaderboard_bad_metric_names_what_is_available(store):
    with pytest.raises(ValueError, match="metric 'nope'.*available: .*lpips_alex"):
        report.leaderboard(store.frame(), sort_by="nope")


def test_table1_layout_published_numbers_and_ours(store):
    table = report.paper_table(store.frame(), "table1")
    spec = TABLES["table1"]
    assert [row[0] for row in table.rows] == [r.label for r in spec.rows]
    assert table.headers("md")[:3] == ["Method", "MACs (T) (paper)", "Speedup (paper)"]
    assert table.headers("md")[5] == "MACs (T) (ours)"
    rows = {r["Method"]: r for r in table.records()}
    assert rows["DiffSparse (R=43%)"]["paper_fid"] == 26.91  # published, from reference_results
    assert rows["DiffSparse (R=43%)"]["ours_fid"] == pytest.approx(20.0)  # mean of 19.5 and 20.5
    assert rows["ToCa"]["ours_clip"] == pytest.approx(0.164)  # Convention A / 100
    assert rows["ToCa"]["ours_macs"] == pytest.approx(0.57 * 2.86)
    assert rows["FORA (N=2)"]["ours_speedup"] == pytest.approx(1.6)
    assert rows["DuCa"]["ours_fid"] is None  # no run: "—"
    assert "| DuCa | 1.630 | 1.78× | 27.98 | 0.164 | — | — | — | — |" in report.write(table, "md")
    # Table 5's "base" column is a ToCa run whose importance (the default, attention) matches
    table5 = report.paper_table(store.frame(), "table5", experiment="table1_pixart").records()
    assert (table5[2]["Method"], table5[2]["paper_base"], table5[2]["ours_base"]) == (
        "Attention",
        28.35,
        pytest.approx(21.5),
    )
    assert table5[0]["ours_base"] is None


def test_paper_table_cells_carry_the_interval_of_their_runs(tmp_path):
    """Ours beside the paper's number with its 95 % interval: per-image bootstrap, or the stored set-metric one."""
    rng = np.random.default_rng(0)
    with Store(tmp_path / "r.db") as store:
        for seed in (0, 1):
            values = list(rng.uniform(0.1, 0.2, size=16))
            store.put(
                run_row(
                    f"t{seed}",
                    "toca",
                    seed,
                    fid=20.0 + seed,
                    fid_ci_low=18.0 + seed,
                    fid_ci_high=23.0 + seed,
                    lpips_alex=float(np.mean(values)),
                    per_sample={"lpips_alex": {"values": values}},
                )
            )
    toca = next(
        r for r in report.paper_table(Store(tmp_path / "r.db").frame(), "table1").records() if r["Method"] == "ToCa"
    )
    assert toca["ours_fid"] == pytest.approx(20.5)
    assert (toca["ours_fid_ci_low"], toca["ours_fid_ci_high"]) == (18.0, 24.0)  # union over the seeds
    assert "20.50 [18.00, 24.00]" in report.write(report.paper_table(Store(tmp_path / "r.db").frame(), "table1"), "md")


def test_every_paper_layout_renders_with_published_numbers_in_all_formats(store):
    for layout, spec in TABLES.items():
        table = report.paper_table(store.frame(), layout, experiment="table1_pixart")
        assert len(table.rows) == len(spec.rows)
        md, tex, text = (report.write(table, fmt) for fmt in ("md", "tex", "csv"))
        parsed = list(csv.reader(io.StringIO(text)))
        assert parsed[0] == table.headers("csv")
        assert len(parsed) == len(spec.rows) + 1 and all(len(r) == len(parsed[0]) for r in parsed)
        for row, published in zip(parsed[1:], spec.rows):
            for value in published.published.values():
                assert str(value) in row  # every published number is in the CSV
        assert md.count("\n| ") == len(spec.rows) + 1
        assert tex.count(r" \\") == len(spec.rows) + 1 and r"\begin{tabular}" in tex and r"\bottomrule" in tex


def test_paper_table_model_choice_is_checked(store):
    store.put(run_row("other", "full", 0, model="shapes-pixart", experiment="table1_pixart"))
    store.put(run_row("other2", "full", 0, model="mnist-dit", experiment="table1_pixart"))
    table = report.paper_table(store.frame(), "table1", model="shapes-pixart")
    assert "shapes-pixart" in table.notes[0]
    with pytest.raises(ValueError, match="layout: unknown 'table11'"):
        report.paper_table(store.frame(), "table11")


def test_write_rejects_unknown_format_and_writes_file(store, tmp_path):
    table = report.leaderboard(store.frame())
    with pytest.raises(ValueError, match="format: unknown 'xls'; allowed: md, tex, csv"):
        report.write(table, "xls")
    out = tmp_path / "t" / "lb.csv"
    report.write(table, "csv", out)
    assert out.read_text().startswith("rank,model,method,")


def test_pareto_front_mask():
    cost = [1.0, 0.5, 0.5, 0.3, 0.9]
    quality = [0.0, 0.1, 0.2, 0.5, 0.15]  # lower is better (LPIPS); the last is beaten by (0.5, 0.1)
    assert report.pareto_front(cost, quality, higher_is_better=False).tolist() == [True, True, False, True, False]
    assert report.pareto_front(cost, [-q for q in quality], higher_is_better=True).tolist() == [
        True,
        True,
        False,
        True,
        False,
    ]


def test_plots_are_written(store, tmp_path):
    from PIL import Image

    frame = store.frame()
    pareto = report.pareto_plot(frame, tmp_path / "plots" / "pareto.png")
    curves = report.curves_plot(frame, tmp_path / "plots" / "curves.png")
    grids = report.grid_compare(frame, tmp_path / "plots" / "grids.png")
    maps = report.heatmaps(frame, tmp_path / "plots", runs=["r4s0", "toca_ratio0.3"])
    assert len(maps) == 3  # one run_id, and both seeds of the label
    for path in (pareto, curves, grids, *maps):
        assert Image.open(path).size[0] > 100


def test_decision_map_from_a_serialised_schedule(tmp_path):
    from dsbench.core import Kind

    schedule = {
        "codes": [[int(Kind.FULL)] * 2, [int(Kind.TOPK), int(Kind.REUSE)]],
        "k": [[None, None], [16, None]],
        "layers": ["main0.sa", "main0.mlp"],
        "meta": {"n_tokens": [64, 64]},
    }
    (tmp_path / "decisions.json").write_text(json.dumps(schedule))
    grid, layers = report.decision_map(tmp_path)
    assert grid.tolist() == [[1.0, 1.0], [0.25, 0.0]] and layers == ["main0.sa", "main0.mlp"]


def test_leaderboard_explains_runs_off_budget(tmp_path):
    with Store(tmp_path / "b.db") as store:
        store.put(run_row("a", "full", 0, budget=0.5, lpips_alex=0.0))
        store.put(run_row("b", "toca", 0, budget=0.5, macs_ratio=0.499, tuned={"ratio": 0.6}, lpips_alex=0.1))
        store.put(
            run_row(
                "c",
                "fora",
                0,
                budget=0.5,
                macs_ratio=0.34,
                tuned={"interval": 3},
                lpips_alex=0.2,
                budget_note="interval is an integer: nearest reachable 0.340 (interval=3) / 0.505 "
                "(interval=2); the run takes the one within budget",
            )
        )
        table = report.leaderboard(store.frame())
    text = report.write(table, "md")
    section = text[text.index("Off budget (> 2 %): why") :]
    assert "- pixart-alpha-256 fora: MAC ratio 0.340 for a budget of 0.50; interval is an integer" in section
    assert "toca" not in section and "full" not in section  # within 2 %, and the reference


def test_paper_table_falls_back_to_its_embedded_analogue(tmp_path):
    """No GPU runs of Table 1: the layout reads the analogue experiment on shapes-pixart instead, published MACs as
    ratios to the uncached model beside ours, DiffSparse rows matched by the folder of their schedule."""
    rng = np.random.default_rng(1)
    with Store(tmp_path / "r.db") as store:
        for run_id, method, params, ratio, lpips in (
            ("f", "full", None, 1.0, 0.0),
            ("t", "toca", None, 0.568, 0.010),
            ("d", "diffsparse", {"schedule": "results/paper/schedules/shapes-pixart/r43/schedule.json"}, 0.568, 0.002),
        ):
            values = list(np.clip(rng.normal(lpips, 0.001, 16), 0, None)) if lpips else [0.0] * 16
            store.put(
                run_row(
                    run_id,
                    method,
                    0,
                    params=params,
                    model="shapes-pixart",
                    experiment="paper_table1",
                    macs_ratio=ratio,
                    lpips_alex=float(np.mean(values)),
                    per_sample={"lpips_alex": {"values": values}},
                )
            )
        table = report.paper_table(store.frame(), "table1")
    rows = {r["Method"]: r for r in table.records()}
    assert rows["ToCa"]["paper_macs_ratio"] == pytest.approx(1.64 / 2.86)
    assert rows["ToCa"]["ours_macs_ratio"] == pytest.approx(0.568)
    assert rows["DiffSparse (R=43%)"]["ours_lpips_alex"] == pytest.approx(0.002, abs=5e-4)
    low, high = (
        rows["DiffSparse (R=43%)"]["ours_lpips_alex_ci_low"],
        rows["DiffSparse (R=43%)"]["ours_lpips_alex_ci_high"],
    )
    assert low < rows["DiffSparse (R=43%)"]["ours_lpips_alex"] < high
    assert rows["DiffSparse (R=54%)"]["ours_lpips_alex"] is None and rows["DiCache"]["ours_lpips_alex"] is None
    assert "paper_fid" in table.headers("csv") and "ours_fid" in table.headers("csv")
    assert "embedded analogue: experiment 'paper_table1' on 'shapes-pixart'" in table.notes[0]
    assert "DiCache: DiCache is not implemented in dsbench." in table.notes


def test_paper_tables_without_analogue_say_why(store):
    for layout in ("table3", "table9"):
        notes = report.paper_table(store.frame(), layout).notes
        assert any(n.startswith("No embedded analogue: the embedded model zoo has no") for n in notes)


# ------------------------------------------------------------------------------------------- LaTeX (issue 22)


def _latex_store(tmp_path):
    """full (PSNR = inf against itself), a ToCa run on DiT (its schedule needs explaining) and an off-budget FORA
    run whose note has Markdown backticks and LaTeX specials."""
    store = Store(tmp_path / "tex.db")
    dit = {"model": "mnist-dit", "experiment": "quickstart"}
    store.put(run_row("f", "full", 0, **dit, budget=0.5, psnr=float("inf"), lpips_alex=0.0, family="dit"))
    store.put(
        run_row(
            "t",
            "toca",
            0,
            **dit,
            budget=0.5,
            macs_ratio=0.5,
            tuned={"ratio": 0.13},
            psnr=33.0,
            lpips_alex=0.1,
            family="dit",
            config={"interval": 3, "ratio": 0.13, "threshold_rule": "per_layer", "warmup": None},
            full_steps=[0, 7, 10, 13, 15, 17, 19],
        )
    )
    store.put(
        run_row(
            "o",
            "fora",
            0,
            **dit,
            params={"interval": 3},
            budget=0.5,
            macs_ratio=0.34,
            psnr=30.0,
            lpips_alex=0.2,
            family="dit",
            config={"interval": 3},
            budget_note="`interval` is an integer & 100 % of 50_000 #steps: nearest ~0.34",
        )
    )
    return store


def _tabular_spec(tex: str) -> str:
    return tex.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0]


def test_latex_booktabs_escaped_aligned_infinity_and_notes_below(tmp_path):
    with _latex_store(tmp_path) as store:
        table = report.leaderboard(store.frame(), metrics=["psnr"])
    tex = report.write(table, "tex")
    assert tex.isascii()  # every Unicode symbol mapped: compiles with plain pdflatex
    assert "`" not in tex  # Markdown backticks became \texttt
    assert r"\texttt{full}" in tex and r"\texttt{interval}" in tex
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule") < tex.index(r"\end{tabular}")
    # text columns left, numbers right
    headers, spec = table.headers("tex"), _tabular_spec(tex)
    assert len(spec) == len(headers)
    align = dict(zip(headers, spec))
    assert (align["Model"], align["Method"], align["Tuned"], align["At budget"]) == ("l", "l", "l", "l")
    assert (align["Rank"], align["MAC ratio"], align["Speedup"], align["psnr"], align["Seeds"]) == ("r",) * 5
    # inf as $\infty$, never "inf"
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    full = next(line for line in body.splitlines() if " & full & " in line)
    assert r"$\infty$" in full and "inf " not in full.replace(r"\infty", "")
    # notes: a footnote-size list after the tabular, every item escaped, sections as nested lists
    notes = tex[tex.index(r"\end{tabular}") : tex.index(r"\end{table}")]
    assert r"\footnotesize" in notes and notes.count(r"\begin{itemize}") == notes.count(r"\end{itemize}") >= 2
    assert r"\item{} \textit{Off budget (\textgreater{} 2 \%): why}" in notes
    assert r"\& 100 \% of 50\_000 \#steps: nearest \textasciitilde{}0.34" in notes
    assert r"\item{} {}[low, high]" in notes  # a leading "[" cannot be read as \item's optional argument
    assert tex.count("{") == tex.count("}")


def test_latex_escapes_every_text_cell_and_the_title():
    table = report.Table(
        "R&D 50% #1_a",
        [report.Column("Name", report.text), report.Column("Value", report.fixed(2))],
        [["a_b & c%", 1.0], ["[x] ~y^", float("-inf")], ["z", None]],
        ["see `code_here` & 5 % more"],
    )
    tex = report.to_latex(table)
    assert r"\caption{R\&D 50\% \#1\_a}" in tex
    assert r"a\_b \& c\% & 1.00 \\" in tex
    assert r"{}[x] \textasciitilde{}y\textasciicircum{} & $-\infty$ \\" in tex
    assert r"z & --- \\" in tex
    assert r"\item{} see \texttt{code\_here} \& 5 \% more" in tex
    assert _tabular_spec(tex) == "lr"


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None, reason="no pdflatex on this machine")
def test_latex_table_compiles(tmp_path):
    import subprocess

    with _latex_store(tmp_path) as store:
        tex = report.write(report.leaderboard(store.frame(), metrics=["psnr"]), "tex")
    document = tmp_path / "t.tex"
    document.write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        f"\\begin{{document}}\n\\resizebox{{\\textwidth}}{{!}}{{x}}\n{tex}\\end{{document}}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]


# ------------------------------------------------------------------------------------ schedule notes (ToCa)


def test_leaderboard_explains_tocas_full_steps_on_dit(tmp_path):
    with _latex_store(tmp_path) as store:
        table = report.leaderboard(store.frame())
    md = report.write(table, "md")
    section = md[md.index("Schedules that may surprise: why") :]
    toca = next(line for line in section.splitlines() if line.startswith("- ToCa on mnist-dit (dit):"))
    assert "step-weighted interval" in toca and "sparse early and dense toward the end" in toca
    assert "interval=3 over 20 steps gives [0, 7, 10, 13, 15, 17, 19] rather than 0, 3, 6" in toca
    assert "step(s) 4 are full at layer 0 only" in toca
    assert [line for line in section.splitlines() if line.startswith("- ")] == [toca]  # fora, full: no surprise
    tex = report.write(table, "tex")
    assert r"ToCa on mnist-dit (dit): full steps follow the authors' step-weighted interval" in tex


def test_toca_full_steps_rule_matches_the_documented_schedules():
    from dsbench.methods import toca

    assert toca.full_steps("dit", 3, 20) == ([0, 7, 10, 13, 15, 17, 19], [4])
    assert toca.full_steps("dit", 3, 50) == (  # docs/methods/toca.md, DDIM-50
        [0, 5, 9, 13, 19, 22, 25, 28, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49],
        [4, 17],
    )
    assert toca.full_steps("pixart", 3, 20, "per_step") == ([0, 4, 6, 9, 12, 15, 18], [])
    assert toca.schedule_note("pixart", 3, 20, "per_step").count("[0, 4, 6, 9, 12, 15, 18]") == 1
    assert toca.full_steps("flux", 4, 12, "per_step", warmup=1) == ([0, 4, 8], [])
    assert toca.schedule_note("flux", 4, 12, "per_step", warmup=1) is None  # the plain every-N-th step
    assert toca.Toca.explain_schedule({"family": "dit", "steps": 20, "config": {"interval": 3}}) is not None
    from dsbench.methods.duca import Duca

    assert Duca.explain_schedule({"family": "dit", "steps": 20, "config": {"interval": 3}}) is None
