"""What the arms running another library (``cachedit``, ``diffusers_hook``) share: putting back exactly the
instance attributes a library's own removal leaves behind (cache-dit keeps its patched ``forward`` on a DiT,
diffusers keeps a hook registry on every module it touched)."""

from __future__ import annotations

import torch


def snapshot_instances(model: torch.nn.Module) -> list[tuple[torch.nn.Module, dict]]:
    """Each sub-module's instance ``__dict__`` as it is now (the objects, not copies)."""
    return [(module, dict(vars(module))) for module in model.modules()]


def restore_instances(saved: list[tuple[torch.nn.Module, dict]]) -> None:
    """Every instance attribute back to the object it held at the snapshot; those added since, removed."""
    for module, before in saved:
        now = vars(module)
        for name in [n for n in now if n not in before]:
            del now[name]
        for name, value in before.items():
            if now.get(name) is not value:
                now[name] = value
