"""`dsbench train diffsparse FILE`: training files are validated whole before work, then trained and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsbench.cli import main as dsbench
from dsbench.methods.diffsparse.schedule import load_schedule
from dsbench.training import train_file

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_training_files_validate_and_the_quickstart_reads_their_schedules():
    spec, todo = train_file.load(ROOT / "experiments" / "train_embedded.yaml")
    assert {entry.model for entry, _ in todo} == {"mnist-dit", "shapes-pixart"}
    quickstart = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    reads = next(m for m in quickstart["methods"] if m["name"] == "diffsparse")["models"]
    for entry, config in todo:
        assert reads[entry.model]["schedule"] == f"{entry.out}/schedule.json"
        assert config.ratio == pytest.approx(quickstart["budget"]["macs_ratio"])  # trained at the quickstart budget
        assert entry.minutes <= 15  # issue 5: the embedded schedule trains in 15 minutes on 2 cores


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"schedules": [{"model": "mnist-dit", "out": "x", "colour": 1}]},
            r"schedules\[0\]: unknown field 'colour'; allowed fields: model, out, minutes, evaluate, params",
        ),
        (
            {"schedules": [{"model": "mnist-dit", "out": "x", "params": {"ratio": 1.5}}]},
            r"schedules\[0\]: params: field 'ratio': .*less than 1",
        ),
        (
            {"schedules": [{"model": "shapes-pixart", "out": "x", "params": {"pixart_lambda1": -1}}]},
            r"schedules\[0\]: params: field 'pixart_lambda1': .*greater than or equal to 0",
        ),
        (
            {"schedules": [{"model": "mnist-dit", "out": "x", "params": {"lr": 1}}]},
            r"params: unknown field 'lr'; allowed fields: ratio, interval",
        ),
        ({"schedules": [{"model": "no-such-model", "out": "x"}]}, r"'no-such-model' is not in the model zoo"),
        (
            {"schedules": [{"model": "mnist-dit", "out": "x"}, {"model": "shapes-pixart", "out": "x"}]},
            r"schedules\[1\]: field 'out': x is also the output of schedules\[0\]",
        ),
        ({"schedules": []}, r"field 'schedules'"),
        ({"threads": 0, "schedules": [{"model": "mnist-dit", "out": "x"}]}, r"field 'threads'"),
        ({"defaults": {"minutes": -1}, "schedules": [{"model": "mnist-dit", "out": "x"}]}, r"field 'defaults.minutes'"),
        ({"schedule": []}, r"unknown field 'schedule'; allowed fields: name, threads, defaults, schedules"),
    ],
)
def test_bad_training_files_fail_before_work(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=message):
        train_file.load(path)
    assert dsbench(["train", "diffsparse", str(path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]


def test_train_file_passes_pixart_lambda1_to_the_trainer(tmp_path):
    """A −s1 ablation base is trained from a training file like any other TrainConfig field."""
    path = write(
        tmp_path,
        {
            "defaults": {"params": {"pixart_lambda1": 1.0}},
            "schedules": [
                {"model": "shapes-pixart", "out": "a"},
                {"model": "shapes-pixart", "out": "b", "params": {"drop": ["s1"]}},
            ],
        },
    )
    _, todo = train_file.load(path)
    assert [(c.pixart_lambda1, c.drop) for _, c in todo] == [(1.0, ()), (1.0, ("s1",))]


def test_train_file_trains_evaluates_then_only_reexports(tmp_path, capsys):
    out = tmp_path / "mnist"
    path = write(
        tmp_path,
        {
            "threads": 2,
            "defaults": {"evaluate": 2, "params": {"ratio": 0.5, "stages": "single", "conditions": 1, "batch": 1}},
            "schedules": [
                {"model": "mnist-dit", "out": str(out), "params": {"lr_scale": 0.03}},
                {"model": "shapes-pixart", "out": str(tmp_path / "unused")},
            ],
        },
    )
    with pytest.raises(ValueError, match="--only nowhere: not an 'out'"):
        train_file.run(path, only=["nowhere"])
    assert dsbench(["train", "diffsparse", str(path), "--only", str(out)]) == 0
    assert not (tmp_path / "unused").exists()
    schedule = load_schedule(out / "schedule.json")
    assert schedule.meta["config"]["lr_scale"] == pytest.approx(0.03)
    assert schedule.meta["budget_ratio"] == pytest.approx(0.5)
    assert (out / "train_command.txt").read_text().strip() == f"dsbench train diffsparse {path} --only {out}"
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["schedule"] for r in rows][0] == "learned (DiffSparse)" and rows[0]["macs_ratio"] < 0.51
    assert all(r["lpips_alex_ci"][0] <= r["lpips_alex"] <= r["lpips_alex_ci"][1] for r in rows)  # 95 % intervals
    assert "| learned (DiffSparse) |" in (out / "README.md").read_text()
    log = (out / "train_log.txt").read_text()
    assert "stage single iter 1/1" in log

    # a second call finds the finished checkpoint: no training iteration, the same schedule re-exported
    before = (out / "schedule.json").read_text()
    assert dsbench(["train", "diffsparse", str(path), "--only", str(out)]) == 0
    again = (out / "train_log.txt").read_text()[len(log) :]
    assert "resumed after the last stage: exporting" in again and "iter" not in again
    assert json.loads((out / "schedule.json").read_text())["meta"]["levels"] == json.loads(before)["meta"]["levels"]


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"match": {"method": "toca"}, "params": {"ratio": 0.4}},
            "fields 'match' and 'params.ratio' both set the budget",
        ),
        ({"match": {"method": "tocaa"}}, r"field 'match.method': unknown method 'tocaa' \(available: .*toca"),
        ({"match": {"method": "toca", "params": {"ratio": 2}}}, "ratio"),
    ],
)
def test_a_budget_matched_to_a_method_is_checked_before_work(tmp_path, entry, message):
    path = write(tmp_path, {"schedules": [{"model": "mnist-dit", "out": str(tmp_path / "s"), **entry}]})
    with pytest.raises(ValueError, match=message):
        train_file.load(path)
    assert not (tmp_path / "s").exists()


def test_matched_ratio_is_the_compared_methods_counted_mac_saving():
    """Half the steps cost half the MACs: the matched budget is R = 0.5, counted on the model, not typed."""
    from dsbench import methods
    from dsbench.models import zoo

    bundle = zoo.load("mnist-dit")
    assert train_file.matched_ratio(bundle, methods.build("steps", fraction=0.5)) == pytest.approx(0.5)
    assert train_file.matched_ratio(bundle, methods.build("full")) == 0.0
