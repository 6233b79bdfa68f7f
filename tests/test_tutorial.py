"""docs/write-a-method.md: its ```python blocks, in order, run as one script (a tiny random-weight DiT, no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsbench.methods import base

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "write-a-method.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks opened by exactly ```python (indented or other-language ones are skipped)."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture
def clean_registry():
    """The tutorial registers `stride`; take it out again so the test can run twice in one process."""
    before = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def test_tutorial_runs_and_its_method_saves_macs(clean_registry, capsys):
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 6, "the tutorial lost its code blocks"
    namespace: dict = {"__name__": "tutorial"}
    for n, block in enumerate(blocks):
        code = compile(block, f"{TUTORIAL.name} block {n + 1}", "exec", dont_inherit=True)  # no __future__ of ours
        exec(code, namespace)

    report = namespace["report"]
    assert report["method"] == "stride"
    assert report["config"] == {"interval": 3, "reuse": "all"}
    assert report["full_steps"] == [0, 3, 6, 9]
    assert 0 < namespace["ratio"] < namespace["mlp_ratio"] < 1
    assert namespace["images"].shape == namespace["reference"].shape
    assert [e.name for e in namespace["exp"].method_entries()] == ["full", "fora", "stride"]
    out = capsys.readouterr().out
    assert "stride" in out and "reuse" in out  # the printed report and the rejected parameter
