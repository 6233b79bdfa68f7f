"""The Schedule (METHODS §0.6): every decision of one sampling run, serialisable to JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from methods.base import Decision, Directive, DirectiveKind, Kind, Layer


@dataclass
class Schedule:
    T: int
    layers: list[Layer]
    directives: list[Directive]
    decisions: list[list[Decision]]  # [step][layer]
    meta: dict[str, Any] = field(default_factory=dict)

    def full_steps(self) -> list[int]:
        """Steps whose every layer is FULL under a NORMAL directive."""
        return [
            i
            for i, (d, row) in enumerate(zip(self.directives, self.decisions))
            if d.kind is DirectiveKind.NORMAL and all(c.kind is Kind.FULL for c in row)
        ]

    def codes(self) -> list[list[int]]:
        """One integer per cell: the Kind code (REUSE 0, FULL 1, TOPK 2, TAYLOR 3)."""
        return [[int(c.kind) for c in row] for row in self.decisions]

    def counts(self) -> list[list[int]]:
        """Tokens computed per cell (TOPK k, FULL n, else 0), given ``n_tokens`` per layer in meta."""
        n = self.meta.get("n_tokens")
        if n is None:
            raise ValueError("schedule meta lacks n_tokens")
        return [
            [n[ell] if c.kind is Kind.FULL else c.k if c.kind is Kind.TOPK else 0 for ell, c in enumerate(row)]
            for row in self.decisions
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "T": self.T,
            "layers": [layer.name for layer in self.layers],
            "directives": [str(d) for d in self.directives],
            "codes": self.codes(),
            "k": [[c.k for c in row] for row in self.decisions],
            "m": [[c.m for c in row] for row in self.decisions],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        """Hash of the decisions alone: equal for runs that made the same choices."""
        body = {k: v for k, v in self.to_dict().items() if k != "meta"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
