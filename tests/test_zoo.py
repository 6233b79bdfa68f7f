"""The model zoo's hub entries: the real from_pretrained path, offline failures that name the checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import dit_pipeline

from dsbench.cli import main
from dsbench.models import zoo
from dsbench.models.hub import CheckpointUnavailable


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


@pytest.mark.parametrize(
    "name, repo", [("dit-xl-2-256", "facebook/DiT-XL-2-256"), ("flux-schnell", "black-forest-labs/FLUX.1-schnell")]
)
def test_offline_hub_entry_fails_fast_naming_the_checkpoint(empty_hub, name, repo):
    with pytest.raises(CheckpointUnavailable, match=repo):
        zoo.load(name, device="cpu")


def test_hub_entry_loads_a_local_snapshot_with_from_pretrained(empty_hub):
    """The real loading code on a checkpoint built here, laid out as the hub cache stores it."""
    repo_dir = empty_hub / "models--facebook--DiT-XL-2-256"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    pipe = dit_pipeline()
    pipe.save_pretrained(repo_dir / "snapshots" / ("0" * 40))
    bundle = zoo.load("dit-xl-2-256", device="cpu", dtype=torch.float32)
    assert type(bundle.pipeline).__name__ == "DiTPipeline" and bundle.kind == "hub"
    assert bundle.pipeline.scheduler.config.timestep_spacing == "linspace"
    assert bundle.sampler.steps == 50 and bundle.sampler.guidance_scale == 1.5
    images = bundle.sample([1, 2], seed=0, steps=3)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8)
    assert len(set(bundle.conditions(2000, seed=0))) == 1000


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="available: .*dit-xl-2-256"):
        zoo.load("dit-xxl")


def test_models_command_lists_hub_and_embedded_entries(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in zoo.available():
        assert name in out
    assert "hub" in out
