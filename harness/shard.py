"""Sample generation sharded across processes with ``accelerate launch`` (docs/architecture.md).

``accelerate launch --num_processes N [--cpu] -m dsbench.cli run FILE`` starts N ranks that all run the
same experiment in lockstep: each rank generates a contiguous slice of the evaluation conditions (image i
keeps the generator of its index, so the images are those of one process), rank 0 gathers the slices,
computes metrics, latency and memory, and is the only rank that touches the store, the teacher cache,
the artifacts and W&B. Rank 0 also takes every decision (what to resume, the tuned budget value, a skip)
and broadcasts it, so the ranks can never disagree. Without ``accelerate launch`` there is one rank and
nothing is communicated.
"""

from __future__ import annotations

from typing import Any

import torch


class Shard:
    """This process's rank among the launched ones (accelerate's ``PartialState``)."""

    def __init__(self, state=None):
        from accelerate import PartialState

        self.state = state or PartialState()
        self.index: int = self.state.process_index
        self.count: int = self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [start, stop) of ``n`` items; the first ``n % count`` ranks take
        one more, so rank 0's slice is never empty when n >= 1."""
        base, extra = divmod(n, self.count)
        start = self.index * base + min(self.index, extra)
        return start, start + base + (self.index < extra)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gather(self, part: torch.Tensor) -> torch.Tensor | None:
        """The ranks' slices concatenated in rank order on rank 0; None on the other ranks."""
        if self.count == 1:
            return part
        import torch.distributed as dist

        parts: list | None = [None] * self.count if self.is_main else None
        dist.gather_object(part.cpu(), parts, dst=0)
        return torch.cat([p for p in parts if p.numel()]) if self.is_main else None  # empty slices: n < ranks

    def wait(self) -> None:
        self.state.wait_for_everyone()
