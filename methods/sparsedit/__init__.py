"""``sparsedit``: SparseDiT (docs/methods/sparsedit.md) — not a caching policy but a rebuilt, fine-tuned model.

Attached, it runs :func:`dsbench.methods.sparsedit.model.sparsify` of the pipeline's transformer in place of
the transformer's forward (per instance; detach restores the original), with fine-tuned weights from
``weights=PATH`` (safetensors, written by ``python -m dsbench.training.sparsedit finetune``). MACs are counted
on the rebuilt model by the engine's usual counter.

    m = methods.build("sparsedit", weights="results/sparsedit/mnist-dit/transformer.safetensors")
    with dsbench.attach(pipe, m) as handle:
        images = pipe(class_labels=[3, 7]).images
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic

from dsbench.core import Method, MethodConfig
from dsbench.methods.base import register
from dsbench.methods.sparsedit.model import (
    LAYOUT_FIELDS,
    PRESET_LAYOUTS,
    Layout,
    SparseDiT,
    check_transformer,
    grid_side,
    pieces,
    pruning_rate,
    resolve_layout,
    sparsify,
)


class SparseDiTConfig(MethodConfig):
    weights: str | None = pydantic.Field(
        None,
        description="fine-tuned weights (.safetensors from `python -m dsbench.training.sparsedit finetune`); "
        "None: the freshly initialised transform, not fine-tuned",
    )
    r_min: float = pydantic.Field(0.61, ge=0.0, lt=1.0, description="pruning rate at low noise (t < T/4), in [0, 1)")
    r_max: float = pydantic.Field(0.86, ge=0.0, lt=1.0, description="pruning rate at pure noise (t = T), in [r_min, 1)")
    prune: bool = pydantic.Field(
        True,
        description="False: the dense equivalent (no pooling, poolingformers keep attention), which "
        "reproduces the pretrained model; cannot take fine-tuned weights",
    )
    poolingformers: int | None = pydantic.Field(
        None, ge=0, description="bottom poolingformers, >= 0 (default by depth)"
    )
    sdtms: int | None = pydantic.Field(None, ge=1, description="sparse-dense token modules, >= 1 (default by depth)")
    sparse_blocks: int | None = pydantic.Field(
        None, ge=0, description="sparse blocks per SDTM after its generation block, >= 0 (default by depth)"
    )
    dense_blocks: int | None = pydantic.Field(
        None, ge=0, description="dense blocks per SDTM after its recovery block, >= 0 (default by depth)"
    )
    top_blocks: int | None = pydantic.Field(None, ge=0, description="top dense blocks, >= 0 (default by depth)")
    num_train_timesteps: int = pydantic.Field(1000, ge=1, description="T of r(t): the training timestep range, >= 1")

    @pydantic.field_validator("weights")
    @classmethod
    def _weights_file(cls, value: str | None) -> str | None:
        if value is not None:
            path = Path(value)
            if path.suffix != ".safetensors":
                raise ValueError(f"weights must be a .safetensors file, got {value!r}")
            if not path.is_file():
                raise ValueError(
                    f"weights file {value!r} does not exist (fine-tune first: "
                    "python -m dsbench.training.sparsedit finetune --model mnist-dit)"
                )
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.r_min > self.r_max:
            raise ValueError(f"r_min ({self.r_min}) must be <= r_max ({self.r_max})")
        if not self.prune and self.weights is not None:
            raise ValueError(
                "prune=False is the dense equivalent of the pretrained model and cannot take "
                "fine-tuned weights (they have no query/key for the poolingformers)"
            )
        return self

    def layout_for(self, num_layers: int) -> Layout:
        return resolve_layout(num_layers, **{name: getattr(self, name) for name in LAYOUT_FIELDS})


def save_weights(model: SparseDiT, path: Path, **extra) -> None:
    """The model's weights with its layout and pruning range as safetensors metadata."""
    from safetensors.torch import save_file

    meta = {
        "layout": json.dumps(vars(model.layout)),
        "r_min": str(model.r_min),
        "r_max": str(model.r_max),
        **{k: str(v) for k, v in extra.items()},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_weights(model: SparseDiT, path: str | Path) -> dict[str, str]:
    """Load fine-tuned weights into ``model``; ValueError when the file was made for another layout."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "layout" in meta and json.loads(meta["layout"]) != vars(model.layout):
        raise ValueError(
            f"sparsedit: weights {path} were fine-tuned for layout {meta['layout']}, this config "
            f"resolves to {json.dumps(vars(model.layout))} (set poolingformers, sdtms, sparse_blocks, "
            "dense_blocks, top_blocks to match)"
        )
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"sparsedit: weights {path} do not fit this model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return meta


@register
class SparseDiTMethod(Method):
    name = "sparsedit"
    Config = SparseDiTConfig
    summary = "SparseDiT: poolingformers + sparse-dense token modules, timestep-wise pruning (fine-tuned weights)"

    def __init__(self, config: SparseDiTConfig):
        super().__init__(config)
        self.layout: Layout | None = None
        self.weights_meta: dict[str, str] = {}

    def replacement(self, transformer) -> SparseDiT:
        check_transformer(transformer)
        self.layout = self.config.layout_for(len(transformer.transformer_blocks))
        model = sparsify(
            transformer,
            self.layout,
            self.config.r_min,
            self.config.r_max,
            prune=self.config.prune,
            num_train_timesteps=self.config.num_train_timesteps,
        )
        if self.config.weights is not None:
            self.weights_meta = load_weights(model, self.config.weights)
        return model.train(transformer.training)

    def resolved_config(self) -> dict:
        out = self.config.model_dump()
        if self.layout is not None:
            out.update(vars(self.layout))
        if self.weights_meta:
            out["weights_meta"] = dict(self.weights_meta)
        return out


__all__ = [
    "SparseDiTConfig",
    "SparseDiTMethod",
    "SparseDiT",
    "Layout",
    "PRESET_LAYOUTS",
    "sparsify",
    "pruning_rate",
    "grid_side",
    "pieces",
    "resolve_layout",
    "save_weights",
    "load_weights",
]
