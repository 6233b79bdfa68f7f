"""benchmarks/device_suite.py on this CPU (tiny configs of the real classes): the report's structure and that
its numbers agree with each other. Nothing about wall-clock time is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_suite.py"
_spec = importlib.util.spec_from_file_location("device_suite", SCRIPT)
device_suite = sys.modules["device_suite"] = importlib.util.module_from_spec(_spec)  # (dataclasses look it up)
_spec.loader.exec_module(device_suite)  # the script as it is run, without putting benchmarks/ on sys.path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    argv = ["--minutes", "20", "--models", "dit-xl-2-256,flux-schnell", "--methods", "full,toca,fora,diffsparse"]
    argv += ["--steps", "4", "--repeats", "1", "--compile-methods", "full", "--threads", "1", "--out", str(out)]
    device_suite.main(argv)
    return json.loads((out / "suite.json").read_text()), (out / "suite.md").read_text()


def test_report_names_the_machine_and_the_configs(report):
    data, md = report
    m = data["machine"]
    for key in ("device", "dtype", "cpu", "torch", "diffusers", "driver", "cuda", "commit", "uncommitted_changes"):
        assert key in m
    assert m["kind"] == "cpu" and m["dtype"] == "float32" and data["configs"] == "tiny (CPU)"
    assert "tiny configs (not GPU figures)" in md and m["cpu"] in md and m["torch"] in md
    assert [e["model"] for e in data["models"]] == ["dit-xl-2-256", "flux-schnell"]
    assert data["models"][0]["cls"] == "DiTTransformer2DModel" and data["models"][1]["cls"] == "FluxTransformer2DModel"


def test_rows_are_consistent(report):
    data, _ = report
    for entry in data["models"]:
        rows = {r["method"]: r for r in entry["rows"]}
        assert {"full", "toca", "fora"} <= set(rows), entry["skipped"]
        full = rows["full"]
        assert full["mac_ratio"] == 1.0 and full["mac_speedup"] == 1.0
        assert rows["fora"]["mac_ratio"] < 1 and rows["toca"]["mac_ratio"] < 1
        for r in rows.values():
            assert len(r["seconds"]) == len(r["full_seconds"]) == 1
            assert r["speedup"] == pytest.approx(r["full_seconds"][0] / r["seconds"][0])
            assert r["speedup_per_mac_speedup"] == pytest.approx(r["speedup"] * r["mac_ratio"])
            assert r["finite"] and r["steps_run"] == 4
            assert r["peak_memory_bytes"] is None  # CPU: not measured
            shares = r["profile"]["shares"]
            assert all(0.0 <= v <= 1.0 for v in shares.values()), shares
        # full never scatters token rows nor selects tokens (its end-of-step work is timed: a no-op); ToCa's
        # partial steps do both
        assert full["profile"]["shares"]["scatter"] == 0.0
        assert full["profile"]["shares"]["selection_host"] < rows["toca"]["profile"]["shares"]["selection_host"]
        assert rows["toca"]["profile"]["shares"]["scatter"] > 0 and rows["toca"]["profile"]["shares"]["gather"] > 0


def test_diffsparse_runs_a_dp_schedule_at_tocas_macs(report):
    data, _ = report
    dit = {r["method"]: r for r in data["models"][0]["rows"]}
    assert dit["diffsparse"]["config"]["budget_ratio"] == pytest.approx(1 - dit["toca"]["mac_ratio"], abs=1e-6)
    # the DP spends at most the budget; the integer weights round it down by a little
    assert dit["toca"]["mac_ratio"] - 0.05 <= dit["diffsparse"]["mac_ratio"] <= dit["toca"]["mac_ratio"] + 1e-9


def test_methods_outside_the_selection_and_family_are_listed(report):
    data, md = report
    flux = data["models"][1]
    assert "diffsparse" in {s["method"] for s in flux["skipped"]} | {r["method"] for r in flux["rows"]}
    c = data["compile"]
    assert c["backend"] == "eager" and c["model"] == "dit-xl-2-256"
    checks = {(e["method"], e["order"]): e for e in c["methods"]}
    assert set(checks) == {("full", "attach-compile"), ("full", "compile-attach")}
    for e in checks.values():
        assert e["status"] == "ok" and e["equal_within_tolerance"] and e["macs_equal_eager"]
        assert e["eager_steps"] == 0 and len(e["graphs_per_step"]) == 4
    assert "## torch.compile (eager, dit-xl-2-256)" in md


def test_a_short_budget_skips_and_says_so(tmp_path):
    device_suite.main(["--minutes", "0.01", "--models", "dit-xl-2-256", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "suite.json").read_text())
    assert data["models"] == [] and data["skipped_models"] == [{"model": "dit-xl-2-256", "reason": "time budget"}]
    assert "Skipped models: dit-xl-2-256 (time budget)" in (tmp_path / "suite.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "sd3"], "--models: unknown sd3; allowed: dit-xl-2-256"),
        (["--methods", "full,nope"], "--methods: unknown nope; allowed:"),
        (["--minutes", "0"], "--minutes must be > 0"),
        (["--compile-backend", "tvm"], "--compile-backend must be one of inductor"),
    ],
)
def test_bad_arguments_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        device_suite.parse_args(argv)
    assert message in capsys.readouterr().err
