"""``mnist-dit``'s training: the VAE, the domain classifier and the DiT, each a step function and its data
in the shared loop (``dsbench.models.embedded.loop``); ``train`` runs the phases and records them."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsbench.models.embedded.common import Log, atomic_dir, atomic_text, bf16_autocast, native_bf16
from dsbench.models.embedded.loop import Checkpoint, Loop, fingerprint
from dsbench.models.embedded.mnist_dit.data import mnist, shift, to_rgb_uint8, to_unit
from dsbench.models.embedded.mnist_dit.model import (
    CLASSIFIER_CONFIG,
    DIT_CONFIG,
    ID2LABEL,
    NAME,
    NULL_CLASS,
    SCHEDULER_CONFIG,
    VAE_CONFIG,
    WEIGHTS,
    MNISTClassifier,
    load_vae,
    save_classifier,
    save_model,
)

CACHE = Path.home() / ".cache" / "dsbench" / "train" / NAME  # resumable training state (not committed)


def _cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, _ = mnist("train")
    test_x, _ = mnist("test")
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

    def step_fn(step: int):
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        x = to_unit(train_x[idx])
        with bf16_autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        mse, l1 = F.mse_loss(rec, x), F.l1_loss(rec, x)
        kl = post.kl().float().mean() / z[0].numel()
        return mse + 0.5 * l1 + kl_weight * kl, {"mse": mse.item(), "l1": l1.item(), "kl/elem": kl.item()}

    Loop("vae", vae, opt, steps=steps, scheduler=sched, clip_grad=1.0, log=log, log_every=100).run(step_fn)
    vae.eval()
    # scaling factor: 1 / std of posterior samples of the training set (as Stable Diffusion / DiT latents)
    with torch.no_grad():
        x = to_unit(train_x[torch.randperm(len(train_x), generator=gen)[:4096]])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        scaling = float(1.0 / z.std())
        test = to_unit(torch.from_numpy(test_x[:1000]))
        rec = vae.decode(vae.encode(test).latent_dist.mean).sample.clamp(-1, 1)
        test_mse = F.mse_loss(rec, test).item()
    vae.register_to_config(scaling_factor=scaling)
    save_model(vae, out_dir / "vae")
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

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = (torch.from_numpy(a) for a in mnist("train"))
    test_x, test_y = (torch.from_numpy(a) for a in mnist("test"))
    model = MNISTClassifier(**CLASSIFIER_CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"classifier: CNN {n_params / 1e6:.2f}M params, {steps} steps × batch {batch_size}, lr {lr}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, 50, floor=0.02))
    model.train()
    t0 = time.time()

    def step_fn(step: int):
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        x = to_rgb_uint8(shift(train_x[idx], 2, gen))
        with bf16_autocast():
            return F.cross_entropy(model.logits(x).float(), train_y[idx])

    Loop("classifier", model, opt, steps=steps, scheduler=sched, log=log, log_every=200).run(step_fn)
    model.eval()
    acc = (model.predict(to_rgb_uint8(test_x)) == test_y).float().mean().item()
    summary = {"params": n_params, "steps": steps, "seconds": round(time.time() - t0, 1), "test_accuracy": acc}
    log(f"classifier done: {summary}")
    if acc < 0.99:
        log(f"WARNING: classifier test accuracy {acc:.4f} < 0.99")
    save_classifier(model, CLASSIFIER_CONFIG, out_dir / "classifier", {"test_accuracy": acc})
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


def encode_train_set(vae, weights: Path, log) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    x, y = mnist("train")
    x = torch.from_numpy(x)
    means, stds = [], []
    with torch.no_grad(), bf16_autocast():
        for i in tqdm(range(0, len(x), 1000), desc="encode", dynamic_ncols=True):
            post = vae.encode(to_unit(x[i : i + 1000])).latent_dist
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

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = load_vae(out_dir)
    scaling = vae.config.scaling_factor
    mean, std, labels = encode_train_set(vae, out_dir, log)
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
    loop = Loop(
        "dit",
        model,
        opt,
        steps=steps,
        minutes=minutes,
        scheduler=sched,
        clip_grad=1.0,
        ema=ema,
        ema_decay=ema_decay,
        generator=gen,
        checkpoint=Checkpoint(CACHE / "dit_checkpoint.pt", hparams, fingerprint(model), log),
        checkpoint_every=checkpoint_every,
        log=log,
        log_every=100,
    )
    if resume:
        loop.resume()
    log(
        f"dit: DiTTransformer2DModel {n_params / 1e6:.2f}M params, {steps} steps × batch {batch_size}, lr {lr}, "
        f"EMA {ema_decay}, label drop {label_drop}, Min-SNR γ {min_snr_gamma}, high-noise cap {high_noise_cap}, "
        f"latent scaling {scaling:.4f}"
    )

    def step_fn(step: int):
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
        return ((pred.float() - noise).pow(2).mean((1, 2, 3)) * weights[t]).mean()

    # eval mode: no dropout layers are active (dropout=0), and it turns off diffusers' per-block label dropout,
    # which would drop the label independently in each block; the drop is one draw per sample.
    model.eval()
    result = loop.run(step_fn)
    losses = result.losses
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    save_model(ema, out_dir / "transformer")
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
        "steps": result.steps,
        "seconds_this_run": result.seconds,
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
