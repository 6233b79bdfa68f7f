"""Sharded sample generation (`accelerate launch --num_processes 2 --cpu`) gives the rows, samples and
metrics of one process: a tiny mnist-dit experiment (6 steps, 5 conditions split 3 + 2) run both ways."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dsbench.shard import Shard
from dsbench.store import Store

EXPERIMENT = """
name: shard
models: [mnist-dit]
steps: 6
eval: {size: 5}
metrics: [lpips, psnr, ssim, alignment]
budget: {macs_ratio: 0.6}
latency: {repeats: 1, warmup: 0}
methods:
  - name: full
  - name: toca
  - name: fora
"""
# what differs between the two runs by nature: timings, memory, paths and the row's own timestamp
MEASURED = {
    "latency_s",
    "latency_full_s",
    "speedup",
    "latency_seconds",
    "latency_full_seconds",
    "peak_memory_mb",
    "artifacts",
    "created_at",
}


def _run(tmp_path: Path, name: str, launch: list[str]) -> tuple[dict, Path]:
    folder = tmp_path / name
    env = {
        **os.environ,  # the same dsbench as this process (the installed package, or PYTHONPATH)
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "DSBENCH_CACHE": str(folder / "cache"),
    }
    command = [
        *launch,
        "-m",
        "dsbench.cli",
        "run",
        str(tmp_path / "shard.yaml"),
        "--store",
        str(folder / "db.sqlite"),
        "--no-wandb",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("**Leaderboard") == 1  # rank 0 alone reports
    with Store(folder / "db.sqlite") as store:
        rows = store.rows("shard")
    assert len(rows) == len(list((folder / "artifacts" / "shard").iterdir())) == 4  # one writer: rank 0
    return {row["method"] + ("_above" if row.get("bracket") else ""): row for row in rows}, folder / "cache"


def _teacher(cache: Path) -> torch.Tensor:
    (entry,) = cache.glob("teachers/*/*/samples.safetensors")
    return load_file(entry)["samples"]


@pytest.mark.parametrize("n, count", [(5, 2), (1, 2), (7, 3), (4, 1)])
def test_slices_are_contiguous_cover_everything_and_start_at_rank_0(n, count):
    class State:
        num_processes = count

    spans = []
    for index in range(count):
        state = State()
        state.process_index = index
        spans.append(Shard(state).span(n))
    assert spans[0][0] == 0 and spans[-1][1] == n and spans[0][1] > 0
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_two_processes_give_the_rows_of_one(tmp_path):
    (tmp_path / "shard.yaml").write_text(EXPERIMENT)
    one, one_cache = _run(tmp_path, "one", [sys.executable])
    two, two_cache = _run(
        tmp_path,
        "two",
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--cpu",
        ],
    )
    assert sorted(one) == sorted(two) == ["fora", "fora_above", "full", "toca"]  # fora off budget: bracketed
    # the teacher was drawn sharded in one run and whole in the other
    assert torch.equal(_teacher(one_cache), _teacher(two_cache)) and len(_teacher(one_cache)) == 5
    for method in one:
        a, b = one[method], two[method]
        assert {k: v for k, v in a.items() if k not in MEASURED} == {k: v for k, v in b.items() if k not in MEASURED}
        # samples.png holds every image here (teacher row over method row, 5 ≤ 8): pixel-identical
        grid = [np.asarray(Image.open(Path(r["artifacts"]) / "samples.png")) for r in (a, b)]
        assert np.array_equal(*grid)
        assert np.array_equal(*(np.load(Path(r["artifacts"]) / "decisions.npy") for r in (a, b)))
    assert one["toca"]["lpips_alex"] > 0 and one["toca"]["tuned"]["ratio"] > 0  # a real, tuned comparison
    # fora's integer interval cannot meet 0.6: the row says why, in both runs alike
    assert "interval is an integer" in one["fora"]["budget_note"]
    assert one["toca"]["budget_note"] is None
