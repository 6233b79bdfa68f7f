"""Content-addressed store of teacher samples, reused across runs.

The teacher of a run (the uncached pipeline's images for the same seeds and conditions) is the most
expensive thing fidelity metrics need and is the same for every method, so it is generated once. The key
is a hash of everything that determines the images: model, sampler settings, steps, seed, conditions and
the code version (the files of ``harness/models`` — code, configs and embedded weights — plus the torch
and diffusers versions). An entry is a directory ``<root>/<key[:2]>/<key>/`` holding ``samples.safetensors``
(uint8) and ``manifest.json`` (fields, shape, size, sha256). The samples file names its own entry in its
safetensors metadata (the key and a hash of the fields), so a file moved or copied into another entry, even
under a manifest rewritten to match it, is caught. It is written in a temporary directory and renamed into
place, so readers see a whole entry or none; an entry that fails any check (missing or unreadable manifest,
truncated or altered file, another entry's samples, an older format) is reported and regenerated.
Generation of one key is serialised across threads and processes by a file lock, so concurrent workers
generate it once.

Root: ``$DSBENCH_CACHE/teachers``, default ``~/.cache/dsbench/teachers``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dsbench.models
from dsbench.files import sha256_file

ROOT_ENV = "DSBENCH_CACHE"
REQUIRED_FIELDS = ("model", "sampler", "steps", "seed", "conditions")
FORMAT = 2  # 2: the samples file carries its key and fields hash in its metadata
SAMPLES, MANIFEST = "samples.safetensors", "manifest.json"


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "dsbench") / "teachers"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of every file under ``harness/models`` (code, configs, embedded weights) and of the torch and
    diffusers versions: what turns (model, sampler, seed, conditions) into images."""
    import diffusers

    base = Path(dsbench.models.__file__).parent
    digest = hashlib.sha256(f"torch {torch.__version__}; diffusers {diffusers.__version__}".encode())
    for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(base).as_posix()} {sha256_file(path)}\n".encode())
    return digest.hexdigest()[:16]


def _jsonable(value: Any):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"teacher-cache key fields must be JSON-serialisable; got {type(value).__name__}")


class TeacherCache:
    """``get_or_create(fields, generate)``: the cached samples of ``fields``, generated on a miss."""

    def __init__(self, root: str | Path | None = None, code: str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.code = code  # None: code_version() of this checkout
        self.stats = {"hit": 0, "miss": 0, "corrupt": 0}

    def fields_hash(self, fields: dict[str, Any]) -> str:
        """sha256 of the canonical JSON of ``fields`` alone (stored in the samples file, checked on load)."""
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=_jsonable)
        return hashlib.sha256(text.encode()).hexdigest()

    def key(self, fields: dict[str, Any]) -> str:
        """sha256 of the canonical JSON of ``fields`` plus the code version."""
        missing = [f for f in REQUIRED_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"teacher-cache key lacks {', '.join(missing)} (required: {', '.join(REQUIRED_FIELDS)})")
        payload = {"fields": fields, "code_version": self.code or code_version()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, fields: dict[str, Any]) -> torch.Tensor | None:
        """The cached samples, or None when absent or corrupt (a corrupt entry is reported)."""
        return self._load(self.key(fields))

    def get_or_create(self, fields: dict[str, Any], generate: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Cached samples of ``fields``; on a miss ``generate()`` (uint8 tensor) is called and stored."""
        from filelock import FileLock

        key = self.key(fields)
        samples = self._load(key)
        if samples is not None:
            self.stats["hit"] += 1
            return samples
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / ".locks" / f"{key}.lock"):
            samples = self._load(key, report=False)  # another worker may have written it meanwhile
            if samples is not None:
                self.stats["hit"] += 1
                return samples
            self.stats["miss"] += 1
            samples = generate()
            self._write(key, fields, samples)
            return samples

    def _load(self, key: str, report: bool = True) -> torch.Tensor | None:
        from safetensors import SafetensorError, safe_open

        entry = self.path(key)
        if not entry.exists():
            return None
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            if not isinstance(manifest, dict):
                raise ValueError("manifest is not a mapping")
            if manifest.get("format") != FORMAT:
                raise ValueError(f"written in format {manifest.get('format')!r}, this version reads {FORMAT}")
            if manifest.get("key") != key:
                raise ValueError("manifest is not this entry's")
            file = entry / SAMPLES
            if file.stat().st_size != manifest["bytes"]:
                raise ValueError(f"{SAMPLES} has {file.stat().st_size} bytes, manifest says {manifest['bytes']}")
            if sha256_file(file) != manifest["sha256"]:
                raise ValueError(f"{SAMPLES} checksum differs from the manifest")
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key or meta.get("fields_sha256") != self.fields_hash(manifest["fields"]):
                    raise ValueError(
                        f"{SAMPLES} holds the samples of another entry (its key is "
                        f"{str(meta.get('key'))[:16]}..., not {key[:16]}...)"
                    )
                samples = f.get_tensor("samples")
            if samples.dtype != torch.uint8 or list(samples.shape) != manifest["shape"]:
                raise ValueError("stored tensor is not the manifest's uint8 shape")
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            if report:
                self.stats["corrupt"] += 1
                warnings.warn(
                    f"teacher cache entry {entry} is corrupt, partial or not this key's ({err}); regenerating",
                    stacklevel=3,
                )
            return None
        return samples

    def _write(self, key: str, fields: dict[str, Any], samples: torch.Tensor) -> None:
        """Write the entry in a temporary directory, then rename it into place (replacing a corrupt one)."""
        from safetensors.torch import save_file

        if not isinstance(samples, torch.Tensor) or samples.dtype != torch.uint8:
            raise TypeError(f"teacher samples must be a uint8 tensor, got {getattr(samples, 'dtype', type(samples))}")
        entry = self.path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            identity = {"key": key, "fields_sha256": self.fields_hash(fields), "format": str(FORMAT)}
            save_file({"samples": samples.detach().cpu().contiguous()}, str(tmp / SAMPLES), metadata=identity)
            manifest = {
                "format": FORMAT,
                "key": key,
                "fields": fields,
                "code_version": self.code or code_version(),
                "shape": list(samples.shape),
                "dtype": "uint8",
                "bytes": (tmp / SAMPLES).stat().st_size,
                "sha256": sha256_file(tmp / SAMPLES),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_jsonable))
            for name in (SAMPLES, MANIFEST):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            if entry.exists():  # a corrupt entry: move it aside first, since rename cannot replace a directory
                trash = entry.parent / f".trash-{key}-{uuid.uuid4().hex}"
                os.rename(entry, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
