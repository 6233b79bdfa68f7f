"""Structure of the report's figures (issue 22, point 7): layout, labels and titles read from the matplotlib
objects each plot saves, and the saved PNG's size."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from dsbench import quickstart, report
from dsbench.store import Store


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, in order (the real file is still written)."""
    saved = []
    original = report._save

    def keep(fig, path):
        saved.append(fig)
        return original(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return saved


def row(run_id, method, model, *, label=None, params=None, macs_ratio=1.0, speedup=1.0, artifacts=None, **metrics):
    return {
        "run_id": run_id,
        "experiment": "quickstart",
        "model": model,
        "method": method,
        "label": label or method,
        "params": params or {},
        "tuned": {},
        "budget_macs_ratio": None if method == "full" else 0.5,
        "sampler": "ddim",
        "steps": 20,
        "guidance": 1.0,
        "eval_set": "test",
        "n_samples": 48,
        "seed": 0,
        "code_version": "test",
        "macs": 1e9 * macs_ratio,
        "macs_full": 1e9,
        "macs_ratio": macs_ratio,
        "macs_attention": 1e8,
        "latency_s": 3.7 / speedup,  # absolute seconds: must never be what a figure shows
        "latency_full_s": 3.7,
        "speedup": speedup,
        "peak_memory_mb": 10.0,
        "artifacts": artifacts,
        **metrics,
    }


def samples_png(folder, value: int):
    """A samples.png as the runner writes it: teacher row over method row, 8 images of 32 px, doubled."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((140, 548, 3), value, dtype=np.uint8)).save(folder / "samples.png")
    return str(folder)


@pytest.fixture
def frame(tmp_path):
    """Two models; seven runs each with samples; full's PSNR is infinite (itself against itself)."""
    with Store(tmp_path / "f.db") as store:
        for model in ("mnist-dit", "shapes-pixart"):
            store.put(
                row(
                    f"{model}-full",
                    "full",
                    model,
                    speedup=0.97,  # timing noise of full against itself
                    artifacts=samples_png(tmp_path / model / "full", 0),
                    psnr=float("inf"),
                    lpips_alex=0.0,
                )
            )
            for n in range(6):
                store.put(
                    row(
                        f"{model}-{n}",
                        "fora",
                        model,
                        label=f"fora_N{n + 2}",
                        params={"interval": n + 2},
                        macs_ratio=0.9 - 0.1 * n,
                        speedup=1.1 + 0.1 * n,
                        artifacts=samples_png(tmp_path / model / str(n), 20 * n),
                        psnr=40.0 - 2 * n,
                        lpips_alex=0.01 * (n + 1),
                    )
                )
        yield store.frame()


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def all_text(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for sub in fig.subfigs:
        parts.append(sub._suptitle.get_text() if sub._suptitle else "")
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return "\n".join(parts)


def test_sample_figure_is_rows_of_three_panels_with_teacher_labels(frame, tmp_path, figures):
    runs = frame[frame["model"] == "mnist-dit"]
    path = report.sample_figure(runs, tmp_path / "grids" / "mnist-dit.png")
    fig = figures[-1]
    panels = image_axes(fig)
    assert len(panels) == 7
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(rows) == 3  # 3 + 3 + 1, not one strip
    width, height = Image.open(path).size
    assert 1000 < width < 2200 and width / height < 3  # not a 3884 × 657 strip
    assert panels[0].get_title().startswith("full")  # the reference first
    for ax in panels:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels[0] == "teacher" and labels[1] in ("fora", "full")
    assert any("MACs ×0.90" in ax.get_title() and "1.10× speedup" in ax.get_title() for ax in panels)
    title = fig._suptitle.get_text()
    assert "mnist-dit" in title and "experiment quickstart" in title and "of 48 evaluation images" in title
    assert "top row teacher" in title and "bottom row the method" in title


def test_quickstart_sample_grid_uses_the_report_layout(frame, tmp_path, figures):
    path = tmp_path / "grids" / "shapes-pixart.png"
    quickstart.sample_grid(frame[frame["model"] == "shapes-pixart"], path)
    assert path.exists() and len(image_axes(figures[-1])) == 7
    assert "shapes-pixart" in figures[-1]._suptitle.get_text()
    quickstart.sample_grid(frame.assign(artifacts=None), tmp_path / "none.png")  # nothing to draw: no file
    assert not (tmp_path / "none.png").exists()


def test_grid_compare_one_block_per_model_in_rows(frame, tmp_path, figures):
    path = report.grid_compare(frame, tmp_path / "grids.png")
    fig = figures[-1]
    assert len(fig.subfigs) == 2 and len(image_axes(fig)) == 14
    headings = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert headings[0].startswith("mnist-dit — experiment quickstart") and headings[1].startswith("shapes-pixart")
    width, height = Image.open(path).size
    assert width < 2200 and height > width / 2


def test_heatmap_integer_steps_named_modules_and_a_full_title(tmp_path, figures):
    layers = [f"main{b}.{m}" for b in range(4) for m in ("sa", "mlp")]
    grid = np.random.default_rng(0).uniform(size=(20, len(layers)))
    report.heatmap(
        grid,
        layers,
        tmp_path / "decisions.png",
        model="mnist-dit",
        method="toca",
        config={"interval": 3, "ratio": 0.13, "schedule": [[1, 2]], "warmup": None},
        experiment="quickstart",
        n_samples=48,
    )
    fig = figures[-1]
    panels = image_axes(fig)
    assert [ax.get_title() for ax in panels] == ["sa (self-attention): 4 layers", "mlp (MLP): 4 layers"]
    for ax, module in zip(panels, ("sa", "mlp")):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks)  # no 2.5, 7.5
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"main{b}.{module}" for b in range(4)]
        assert module in ax.get_ylabel() and ax.get_xlabel().startswith("step i")
    title = fig._suptitle.get_text()
    assert title.startswith("toca on mnist-dit")
    assert "config: interval=3, ratio=0.13" in title and "schedule" not in title and "warmup" not in title
    assert "experiment quickstart" in title and "48 evaluation images" in title


def test_heatmap_of_a_run_without_layer_decisions_says_so(tmp_path, figures):
    """SparseDiT runs its own model: its report has no layers, and its map says why instead of failing."""
    path = report.heatmap(np.zeros((20, 0)), [], tmp_path / "decisions.png", model="mnist-dit", method="sparsedit")
    assert path.exists() and not image_axes(figures[-1])
    texts = [t.get_text() for ax in figures[-1].axes for t in ax.texts]
    assert any("no per-layer decisions" in t for t in texts)


def test_heatmaps_of_stored_runs_carry_their_model_and_configuration(tmp_path, figures):
    folder = tmp_path / "run"
    folder.mkdir()
    np.save(folder / "decisions.npy", np.ones((5, 2)))
    (folder / "decisions.json").write_text(json.dumps({"layers": ["main0.sa", "main0.mlp"]}))
    with Store(tmp_path / "h.db") as store:
        store.put(row("h", "fora", "mnist-dit", label="fora_N3", artifacts=str(folder), config={"interval": 3}))
        frame = store.frame()
    report.heatmaps(frame, tmp_path / "maps")
    title = figures[-1]._suptitle.get_text()
    assert title.startswith("fora_N3 on mnist-dit (seed 0)") and "interval=3" in title and "quickstart" in title


def test_pareto_full_is_the_reference_and_infinite_values_are_drawn(frame, tmp_path, figures):
    path = report.pareto_plot(frame, tmp_path / "pareto.png", metric="psnr")
    fig = figures[-1]
    assert Image.open(path).size[0] > 1000
    text = all_text(fig)
    assert "experiment quickstart" in text and "48 images × 1 seed(s)" in text
    assert "seconds" not in text and "latency" not in text  # speedups measured interleaved, never seconds
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(axes) == 4
    for ax in axes:
        full = next(c for c in ax.collections if c.get_label() == "full")
        (x, y), low_top = full.get_offsets()[0], ax.get_ylim()
        assert x == 1.0  # MAC ratio 1 and speedup 1× by definition, not its noisy 0.97
        assert np.isfinite(y) and y > 40.0 and y < low_top[1]  # at the top edge, inside the axes
        assert "full: psnr = +∞ (identical to the teacher), drawn at the top edge" in ax.get_title()
        assert any(t.get_text() == "+∞" for t in ax.texts)
    assert "speedup over full, timed interleaved" in axes[1].get_xlabel()


def test_pareto_lower_is_better_metric_has_full_at_zero(frame, tmp_path, figures):
    report.pareto_plot(frame, tmp_path / "pareto.png", metric="lpips_alex")
    for ax in (ax for ax in figures[-1].axes if ax.get_xlabel()):
        full = next(c for c in ax.collections if c.get_label() == "full")
        assert tuple(full.get_offsets()[0]) == (1.0, 0.0)
        assert "∞" not in ax.get_title()


def test_curves_keep_infinite_values_at_the_edge(frame, tmp_path, figures):
    report.curves_plot(frame, tmp_path / "curves.png", metric="psnr")
    fig = figures[-1]
    assert "experiment quickstart" in fig._suptitle.get_text()
    for ax in (ax for ax in fig.axes if ax.get_xlabel()):
        full = next(line for line in ax.get_lines() if re.match(r"full \(\d+\)", line.get_label()))
        assert np.isfinite(full.get_ydata()).all() and full.get_xdata()[0] == 1.0
