"""What every model-family adapter provides to the engine."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from dsbench.core import CallInfo, Layer, LayerExecutor, set_instance_attr


class Adapter:
    """Exposes a diffusers transformer's blocks as layers runnable on a token subset.

    Subclasses list the blocks (``self.blocks``: (module, stream) in execution order), the
    sub-modules of each (``modules_of``), read call shapes (``call_info``) and implement one
    block's forward (``block_forward``) with every sub-module routed through ``engine.layer``.
    """

    family = ""
    variant = ""
    default_cfg_batched = False
    # statistics each sub-module can record for the scorers (names from dsbench.scores)
    module_provides: dict[str, frozenset[str]] = {}
    # sub-modules whose computation accepts ``keys=`` (TOPK with kv other than "all", dsbench.engine)
    partial_keys: frozenset[str] = frozenset()
    noise_channels: int | None = None  # output channels predicting the noise, when known

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.blocks: list[tuple[torch.nn.Module, str]] = self.list_blocks()
        self.blocks_per_stream: dict[str, int] = {}
        self.layers: list[Layer] = []
        self.block_layers: list[dict[str, int]] = []  # per block: module name → layer index
        for b, (block, stream) in enumerate(self.blocks):
            stream_block = self.blocks_per_stream.get(stream, 0)
            self.blocks_per_stream[stream] = stream_block + 1
            ids = {}
            for module, tokens, supports_topk in self.modules_of(block, stream):
                ids[module] = len(self.layers)
                self.layers.append(
                    Layer(
                        index=len(self.layers),
                        block=b,
                        stream_block=stream_block,
                        stream=stream,
                        module=module,
                        tokens=tokens,
                        supports_topk=supports_topk,
                    )
                )
            self.block_layers.append(ids)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def provides(self, layer: Layer) -> frozenset[str]:
        return self.module_provides.get(layer.module, frozenset())

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """A call's arguments by name, bound by the model class's own ``forward`` signature: whatever wraps
        the instance's ``forward`` (cache-dit's ``(*args, **kwargs)``, a hook registry) names nothing."""
        signature = inspect.signature(type(self.model).forward)
        try:
            return signature.bind(self.model, *args, **kwargs).arguments
        except TypeError as error:
            raise TypeError(f"{type(self.model).__name__}.forward{signature}: {error}") from None

    def install(self, engine: LayerExecutor, undo: list) -> None:
        """Per-instance forward override on every block (restored by ``undo``)."""
        for b, (block, _stream) in enumerate(self.blocks):
            set_instance_attr(block, "forward", self.make_forward(engine, b, block), undo)

    # -- to implement -------------------------------------------------------------------------
    def list_blocks(self) -> list[tuple[torch.nn.Module, str]]:
        raise NotImplementedError

    def modules_of(self, block: torch.nn.Module, stream: str) -> list[tuple[str, str, bool]]:
        """(module name, token kind, supports TOPK) of each sub-module, in execution order."""
        raise NotImplementedError

    def call_info(self, args: tuple, kwargs: dict) -> CallInfo:
        """Shapes of a transformer call from the arguments it was called with."""
        raise NotImplementedError

    def make_forward(self, engine: LayerExecutor, b: int, block: torch.nn.Module) -> Callable:
        raise NotImplementedError

    def output_sample(self, out: Any) -> torch.Tensor:
        """The model-output tensor of a transformer call (a tuple or a diffusers output)."""
        return out[0]

    def keep_output_rows(self, out: Any, previous: torch.Tensor, rows: torch.Tensor) -> Any:
        """``out`` with every image token outside ``rows`` (B×k) taking its output from ``previous``."""
        raise NotImplementedError(f"{self.family}: keeping the previous output of unselected tokens is not supported")

    def output_state(self, out: Any) -> tuple:
        """The tensors a block's return value carries (inverse of the ``as_output`` it passes)."""
        raise NotImplementedError
