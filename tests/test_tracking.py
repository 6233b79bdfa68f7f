"""The W&B mirror, logged OFFLINE and read back from the run files (``wandb/offline-run-*/run-*.wandb``, a
LevelDB-style log of protobuf records): config, tags, job_type, one history step per denoising step, the decision
map and schedule artifacts; one summary run per experiment and one per sweep (none per grid point)."""

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from dsbench import sweep
from dsbench.tracking import Tracker

BLOCK = 32768  # the log's block size; a record never straddles a block header


def _records(path: Path):
    """The protobuf records of one offline run file (FULL, or FIRST + MIDDLE... + LAST chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        body, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 2:
            chunks = [body]
            continue
        if kind == 3:
            chunks.append(body)
            continue
        if kind == 4:
            body = b"".join([*chunks, body])
        record = pb.Record()
        record.ParseFromString(body)
        yield record


def read_runs(folder: Path) -> list[dict]:
    """Every offline run under ``folder``: name, group, job_type, tags, config, history rows, artifacts."""
    runs = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"history": [], "artifacts": [], "summary": {}}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.update(
                    name=r.display_name,
                    group=r.run_group,
                    job_type=r.job_type,
                    tags=list(r.tags),
                    config={u.key: json.loads(u.value_json) for u in r.config.update if u.key != "_wandb"},
                )
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                run["history"].append(row)
            elif kind == "summary":
                for u in record.summary.update:
                    run["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
            elif kind == "artifact":
                a = record.artifact
                run["artifacts"].append(
                    {"name": a.name, "type": a.type, "files": [c.path for c in a.manifest.contents]}
                )
        runs.append(run)
    return runs


def _row(folder: Path, schedule: Path) -> dict:
    """A stored row as the runner writes it, with its artifacts folder (4 steps x 3 layers)."""
    folder.mkdir(parents=True)
    kept = [[1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [1.0, 0.25, 1.0]]
    np.save(folder / "decisions.npy", np.array(kept))
    (folder / "decisions.json").write_text(json.dumps({"kept_fraction": kept, "directives": ["NORMAL"] * 4}))
    for name in ("samples", "decisions"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / f"{name}.png")
    return {
        "run_id": "0123456789abcdef01234567",
        "experiment": "exp",
        "model": "mnist-dit",
        "family": "dit",
        "method": "diffsparse",
        "label": "diffsparse_schedule-r43",
        "params": {"schedule": str(schedule)},
        "config": {"schedule": str(schedule)},
        "tuned": {},
        "budget_macs_ratio": 0.5,
        "steps": 4,
        "seed": 0,
        "full_steps": [0],
        "macs_per_step": [100.0, 60.0, 0.0, 80.0],
        "macs": 240.0,
        "macs_ratio": 0.6,
        "psnr": 30.5,
        "latency_seconds": [0.1, 0.2],
        "artifacts": str(folder),
    }


def test_run_payload_read_back_from_the_offline_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    schedule = tmp_path / "r43" / "schedule.json"
    schedule.parent.mkdir()
    schedule.write_text(json.dumps({"T": 4, "layers": [], "meta": {}}))
    row = _row(tmp_path / "artifacts" / "run", schedule)
    tracker = Tracker(dir=tmp_path / "wb")
    tracker.context = {"name": "sw", "kind": "grid", "point": 3, "points": 8, "values": {"methods.toca.ratio": 0.3}}
    assert tracker.log_run(row) and not tracker.failures
    tracker.context = None
    assert tracker.summary("exp", pd.DataFrame([row]))

    # folders are named by start second and a random id: tell the two runs apart by their job type
    by_type = {r["job_type"]: r for r in read_runs(tmp_path / "wb")}
    run, summary = by_type["run"], by_type["experiment-summary"]
    assert run["name"] == "diffsparse_schedule-r43" and run["group"] == "exp" and run["job_type"] == "run"
    assert set(run["tags"]) == {"family:dit", "model:mnist-dit", "method:diffsparse", "budget:0.5", "sweep:sw"}
    assert run["config"]["run_id"] == row["run_id"] and run["config"]["budget_macs_ratio"] == 0.5
    assert run["config"]["sweep"] == tracker_context_expected()
    steps = run["history"]
    assert [h["_step"] for h in steps] == [0, 1, 2, 3]  # one history row per denoising step
    assert [h["step/macs"] for h in steps] == [100.0, 60.0, 0.0, 80.0]
    assert [h["step/full"] for h in steps] == [1, 0, 0, 0]
    assert [h["step/layers_reused"] for h in steps] == [0, 1, 3, 0]
    assert [h["step/layers_partial"] for h in steps] == [0, 1, 0, 1]
    assert steps[1]["step/kept_fraction"] == pytest.approx(0.5)
    assert steps[-1]["psnr"] == 30.5 and steps[-1]["macs_ratio"] == 0.6 and "samples/_type" in steps[-1]
    assert steps[-1]["decisions/_type"] == "image-file" and "psnr" not in steps[0]
    assert run["summary"]["psnr"] == 30.5
    artifacts = {a["type"]: a for a in run["artifacts"]}
    assert sorted(artifacts["decisions"]["files"]) == ["decisions.json", "decisions.npy", "decisions.png"]
    assert artifacts["schedule"]["files"] == ["schedule.json"]
    assert artifacts["decisions"]["name"] == "decisions-0123456789abcdef"

    assert summary["name"] == "exp-summary" and summary["job_type"] == "experiment-summary"
    assert any(h.get("leaderboard/_type") == "table-file" for h in summary["history"])


def tracker_context_expected() -> dict:
    return {"name": "sw", "kind": "grid", "point": 3, "points": 8, "values": {"methods.toca.ratio": 0.3}}


def test_a_run_without_artifacts_logs_one_step_and_a_failure_only_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(dir=tmp_path / "wb")
    row = {"run_id": "r1", "experiment": "e", "model": "m", "method": "full", "label": "full", "macs_ratio": 1.0}
    assert tracker.log_run(row)
    (run,) = read_runs(tmp_path / "wb")
    assert [h["_step"] for h in run["history"]] == [0] and run["history"][0]["macs_ratio"] == 1.0
    assert "budget:none" in run["tags"] and "family:?" in run["tags"] and not run["artifacts"]
    with pytest.warns(UserWarning, match="W&B mirror failed"):
        assert not tracker.log_run({"run_id": "r2"})  # no label: the mirror fails, the caller goes on


def test_sweep_logs_numbered_runs_and_one_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DSBENCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    base = {
        "models": ["mnist-dit"],
        "steps": 4,
        "eval": {"size": 2},
        "metrics": ["psnr"],
        "latency": {"repeats": 1, "warmup": 0},
        "methods": [{"name": "toca"}, {"name": "fora"}],
    }
    path = tmp_path / "sw.yaml"
    path.write_text(
        yaml.safe_dump({"experiment": base, "grid": {"methods.toca.ratio": [0.3], "methods.fora.interval": [2]}})
    )
    spec = sweep.load(path)
    sweep.run(spec, tmp_path / "r.db", progress=False)

    runs = read_runs(tmp_path)
    kinds = [r["job_type"] for r in runs]
    assert sorted(kinds) == ["run", "run", "sweep-summary"]  # no per-point "<sweep>-summary" runs
    points = {r["config"]["sweep"]["point"]: r for r in runs if r["job_type"] == "run"}
    assert sorted(points) == [1, 2] and all(r["config"]["sweep"]["points"] == 2 for r in points.values())
    assert points[1]["config"]["method"] == "toca" and points[2]["config"]["method"] == "fora"
    assert points[1]["config"]["sweep"]["values"] == {"methods.toca.ratio": 0.3}
    assert "sweep:sw" in points[1]["tags"] and "method:toca" in points[1]["tags"]
    assert all([h["_step"] for h in r["history"]] == [0, 1, 2, 3] for r in points.values())  # 4 denoising steps
    assert all("step/kept_fraction" in r["history"][0] for r in points.values())
    assert all(any(a["type"] == "decisions" for a in r["artifacts"]) for r in points.values())
    (summary,) = [r for r in runs if r["job_type"] == "sweep-summary"]
    assert summary["name"] == "sw-sweep" and summary["group"] == "sw" and summary["config"]["points"] == 2
    assert any(h.get("sweep/_type") == "table-file" for h in summary["history"]) and summary["summary"]["rows"] == 2
