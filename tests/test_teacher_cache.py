"""dsbench.teacher_cache: hits and misses, key sensitivity, corrupt or partial entries regenerated, concurrency."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from dsbench import teacher_cache
from dsbench.models.zoo import Sampler
from dsbench.teacher_cache import MANIFEST, SAMPLES, TeacherCache

FIELDS = {
    "model": "dit-mnist",
    "sampler": Sampler("ddim-linspace", 20, 1.5, 32),
    "steps": 20,
    "seed": 0,
    "conditions": [3, 1, 4, 1],
}


class Generator:
    """A generate_fn that counts its calls; different seeds give different images."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = 0, delay

    def __call__(self, seed: int = 0) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay)
        return torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def cache(tmp_path):
    return TeacherCache(tmp_path, code="code-v1")


def test_miss_then_hit(cache):
    gen = Generator()
    first = cache.get_or_create(FIELDS, gen)
    again = cache.get_or_create(dict(reversed(FIELDS.items())), gen)  # field order does not matter
    assert gen.calls == 1 and torch.equal(first, again) and again.dtype == torch.uint8
    assert cache.stats == {"hit": 1, "miss": 1, "corrupt": 0}
    assert torch.equal(TeacherCache(cache.root, code="code-v1").get(FIELDS), first)  # reused by a new run
    manifest = json.loads((cache.path(cache.key(FIELDS)) / MANIFEST).read_text())
    assert manifest["shape"] == [4, 3, 8, 8] and manifest["fields"]["sampler"]["steps"] == 20
    assert not [p for p in cache.root.rglob(".tmp-*")]  # nothing left behind


def test_key_changes_with_every_field(cache):
    base = cache.key(FIELDS)
    changed = {
        "model": "pixart-scenes",
        "sampler": Sampler("ddim-linspace", 20, 4.5, 32),
        "steps": 10,
        "seed": 1,
        "conditions": [3, 1, 4, 2],
    }
    for name, value in changed.items():
        assert cache.key(FIELDS | {name: value}) != base, name
    assert cache.key(FIELDS | {"negative_prompt": ""}) != base  # extra fields count too
    assert TeacherCache(cache.root, code="code-v2").key(FIELDS) != base
    with pytest.raises(ValueError, match="lacks seed"):
        cache.key({k: v for k, v in FIELDS.items() if k != "seed"})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache.key(FIELDS | {"conditions": object()})


def test_code_version_is_stable():
    version = teacher_cache.code_version()
    assert len(version) == 16 and version == teacher_cache.code_version()
    assert TeacherCache(code=None).key(FIELDS) == TeacherCache(code=version).key(FIELDS)


def _truncate(entry):
    data = (entry / SAMPLES).read_bytes()
    (entry / SAMPLES).write_bytes(data[: len(data) // 2])


def _flip_byte(entry):
    data = bytearray((entry / SAMPLES).read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the checksum sees it
    (entry / SAMPLES).write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated samples": _truncate,
    "altered samples": _flip_byte,
    "missing samples": lambda entry: (entry / SAMPLES).unlink(),
    "missing manifest": lambda entry: (entry / MANIFEST).unlink(),
    "garbled manifest": lambda entry: (entry / MANIFEST).write_text("{not json"),
}


@pytest.mark.parametrize("damage", CORRUPTIONS)
def test_corrupt_entry_is_detected_and_regenerated(cache, damage):
    gen = Generator()
    good = cache.get_or_create(FIELDS, gen)
    entry = cache.path(cache.key(FIELDS))
    CORRUPTIONS[damage](entry)
    with pytest.warns(UserWarning, match="corrupt, partial"):
        again = cache.get_or_create(FIELDS, gen)
    assert gen.calls == 2 and torch.equal(again, good) and cache.stats["corrupt"] == 1
    assert torch.equal(cache.get(FIELDS), good)  # the entry is whole again
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def _rewrite_manifest(entry, samples_file):
    """Put ``samples_file`` into ``entry`` with a manifest that agrees with it (size, sha256, shape)."""
    from safetensors.torch import load_file

    from dsbench.files import sha256_file

    (entry / SAMPLES).write_bytes(samples_file)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest.update(
        bytes=(entry / SAMPLES).stat().st_size,
        sha256=sha256_file(entry / SAMPLES),
        shape=list(load_file(entry / SAMPLES)["samples"].shape),
    )
    (entry / MANIFEST).write_text(json.dumps(manifest))


def test_swapped_samples_under_consistent_manifests_are_detected_and_regenerated(cache):
    """Only the samples file's own metadata (key, fields hash) tells that it is another entry's."""
    other = FIELDS | {"seed": 1}
    gen = Generator()
    first = cache.get_or_create(FIELDS, lambda: gen(0))
    second = cache.get_or_create(other, lambda: gen(1))
    assert not torch.equal(first, second)
    a, b = cache.path(cache.key(FIELDS)), cache.path(cache.key(other))
    a_bytes, b_bytes = (a / SAMPLES).read_bytes(), (b / SAMPLES).read_bytes()
    _rewrite_manifest(a, b_bytes)
    _rewrite_manifest(b, a_bytes)

    fresh = TeacherCache(cache.root, code="code-v1")
    for fields, expected, seed in ((FIELDS, first, 0), (other, second, 1)):
        with pytest.warns(UserWarning, match="samples of another entry"):
            again = fresh.get_or_create(fields, lambda seed=seed: gen(seed))
        assert torch.equal(again, expected)  # the right images, regenerated
        assert torch.equal(fresh.get(fields), expected)  # and stored: the next read is a clean hit
    assert gen.calls == 4 and fresh.stats == {"hit": 0, "miss": 2, "corrupt": 2}


def test_entry_of_an_older_format_is_regenerated(cache):
    gen = Generator()
    good = cache.get_or_create(FIELDS, gen)
    entry = cache.path(cache.key(FIELDS))
    manifest = json.loads((entry / MANIFEST).read_text())
    (entry / MANIFEST).write_text(json.dumps(manifest | {"format": teacher_cache.FORMAT - 1}))
    with pytest.warns(UserWarning, match="written in format 1"):
        again = cache.get_or_create(FIELDS, gen)
    assert gen.calls == 2 and torch.equal(again, good)
    assert json.loads((entry / MANIFEST).read_text())["format"] == teacher_cache.FORMAT


def test_concurrent_workers_generate_once(cache):
    gen = Generator(delay=0.3)
    results = []
    workers = [
        threading.Thread(
            target=lambda: results.append(TeacherCache(cache.root, code="code-v1").get_or_create(FIELDS, gen))
        )
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert gen.calls == 1 and len(results) == 4 and all(torch.equal(r, results[0]) for r in results)


def test_root_from_environment_and_dtype_check(tmp_path, monkeypatch):
    monkeypatch.setenv(teacher_cache.ROOT_ENV, str(tmp_path / "elsewhere"))
    cache = TeacherCache(code="x")
    assert cache.root == tmp_path / "elsewhere" / "teachers"
    with pytest.raises(TypeError, match="uint8"):
        cache.get_or_create(FIELDS, lambda: torch.zeros(1, 3, 4, 4))
    assert cache.get(FIELDS) is None
