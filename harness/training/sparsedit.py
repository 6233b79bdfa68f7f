"""SparseDiT fine-tuning recipe (docs/methods/sparsedit.md) on an embedded model, and its class-accuracy check.

Recipe [P/C], scaled to a CPU: the pretrained DiT is rebuilt by ``sparsify`` and trained the way the base model was
trained ("all training settings follow their respective papers", docs/paper.md) — for mnist-dit the ε-MSE weighted
per timestep as ``mnist_dit.train.train_dit`` weights it (Min-SNR-5 × min(1 + 1/SNR, 20)), labels dropped to the
null class with p = 0.1 for CFG — AdamW lr 1e-4, weight decay 0, EMA of the weights, bf16 autocast. Each batch
draws its timesteps inside one piece of constant grid side (``pieces``; piece chosen with probability ∝ its length,
so t stays uniform over [0, T)) — the paper's "one piece per GPU" on one process. [PD] EMA decay 0.999 with DiT's
warm-up min(decay, (1+k)/(10+k)) instead of 0.9999: a run of a few thousand steps would otherwise keep the initial
weights.

``loss``: ``eps`` (the paper's: the base model's loss to the true noise), ``distill`` [PD] (the same weighted MSE
to the frozen dense model's ε on the same noisy input, timestep and label: a noise-free target, so a short run
learns from far fewer steps), ``both`` (their sum). The paper fine-tunes without a teacher.

    python -m dsbench.training.sparsedit finetune --model mnist-dit --minutes 14
    python -m dsbench.training.sparsedit check --model mnist-dit -n 200
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import dsbench
from dsbench import methods
from dsbench.methods.sparsedit import grid_side, pieces, pruning_rate, resolve_layout, save_weights, sparsify
from dsbench.models import zoo
from dsbench.models.embedded import mnist_dit as md
from dsbench.models.embedded.common import Log, bf16_autocast, native_bf16
from dsbench.models.embedded.loop import Checkpoint, Loop, fingerprint
from dsbench.models.embedded.mnist_dit.train import encode_train_set

REPO = Path(__file__).resolve().parents[2]
MODELS = ("mnist-dit",)
LOSSES = ("eps", "distill", "both")
# the per-timestep weighting of the ε-MSE that trained the base model (mnist_dit.train.train_dit's defaults)
BASE_MIN_SNR_GAMMA, BASE_HIGH_NOISE_CAP = 5.0, 20.0


def results_dir(model: str) -> Path:
    return REPO / "results" / "sparsedit" / model


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)} (embedded DiTs with a training set), got {model!r}")


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def timestep_weights(alphas: torch.Tensor) -> torch.Tensor:
    """Per-timestep weights of the base model's ε-MSE, mean 1: Min-SNR-γ off the nearly noise-free steps,
    min(1 + 1/SNR, cap) on the high-noise steps that decide a digit's class (see ``mnist_dit.train.train_dit``)."""
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=BASE_MIN_SNR_GAMMA) / snr * (1 + 1 / snr).clamp(max=BASE_HIGH_NOISE_CAP)
    return weights / weights.mean()


def finetune_loss(
    loss: str, pred: torch.Tensor, noise: torch.Tensor, teacher: torch.Tensor | None, weight: torch.Tensor
) -> torch.Tensor:
    """The fine-tuning loss of a batch: weighted MSE of the student's ε ``pred`` to the true ``noise`` (eps), to the
    dense ``teacher``'s ε (distill), or their sum (both); ``weight`` is per sample."""
    _check_loss(loss)
    pred = pred[:, : noise.shape[1]].float()
    terms = []
    if loss in ("eps", "both"):
        terms.append((pred - noise).pow(2).mean((1, 2, 3)))
    if loss in ("distill", "both"):
        terms.append((pred - teacher[:, : noise.shape[1]].float()).pow(2).mean((1, 2, 3)))
    return (sum(terms) * weight).mean()


def finetune(
    model: str = "mnist-dit",
    minutes: float | None = 14.0,
    max_steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-4,
    ema_decay: float = 0.999,
    label_drop: float = 0.1,
    r_min: float = 0.61,
    r_max: float = 0.86,
    loss: str = "eps",
    seed: int = 0,
    resume: bool = True,
    checkpoint_every: int = 50,
    log_every: int = 50,
    out_dir: Path | None = None,
    log=None,
) -> dict:
    """Fine-tune SparseDiT from the embedded model's transformer; writes ``transformer.safetensors`` (EMA) and keeps
    its resumable state in ``checkpoint.pt`` (git-ignored) in ``out_dir``."""
    from diffusers import DDIMScheduler
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _check_model(model)
    _check_loss(loss)
    if minutes is None and max_steps is None:
        raise ValueError("give minutes or max_steps (the fine-tuning budget)")
    out_dir = Path(out_dir or results_dir(model))
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or Log(out_dir / "finetune_log.txt")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    pipe = md.load_pipeline(md.WEIGHTS)
    scaling = pipe.vae.config.scaling_factor
    mean, std, labels = encode_train_set(pipe.vae, md.WEIGHTS, log)
    alphas = DDIMScheduler(**md.SCHEDULER_CONFIG).alphas_cumprod.float()
    loss_weights = timestep_weights(alphas)
    transformer = pipe.transformer
    layout = resolve_layout(len(transformer.transformer_blocks))
    net = sparsify(transformer, layout, r_min, r_max, num_train_timesteps=len(alphas))
    teacher = transformer.eval().requires_grad_(False)  # frozen (sparsify copied the weights); --loss distill/both
    ema = copy.deepcopy(net).requires_grad_(False)
    n_tokens = (transformer.config.sample_size // transformer.config.patch_size) ** 2
    spans = pieces(r_min, r_max, n_tokens, len(alphas))
    weights = torch.tensor([hi - lo for lo, hi, _ in spans], dtype=torch.float)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    hparams = dict(
        model=model,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        label_drop=label_drop,
        r_min=r_min,
        r_max=r_max,
        loss=loss,
        seed=seed,
        layout=vars(layout),
        pieces=spans,
    )
    loop = Loop(
        "sparsedit",
        net,
        opt,
        steps=max_steps,
        minutes=minutes,
        ema=ema,
        ema_decay=ema_decay,
        generator=gen,
        checkpoint=Checkpoint(out_dir / "checkpoint.pt", hparams, fingerprint(net), log),
        checkpoint_every=checkpoint_every,
        log=log,
        log_every=log_every,
    )
    if resume:
        loop.resume()
    n_params = sum(p.numel() for p in net.parameters())
    log(
        f"sparsedit finetune {model}: layout {vars(layout)}, {n_params / 1e6:.3f}M params "
        f"(pretrained {sum(p.numel() for p in transformer.parameters()) / 1e6:.3f}M), r ∈ [{r_min}, {r_max}], "
        f"pieces (t_lo, t_hi, side) {spans}, loss {loss} (base model's timestep weights), batch {batch_size}, "
        f"AdamW lr {lr} wd 0, EMA {ema_decay}, "
        f"{'bf16 autocast' if native_bf16() else 'fp32'}, threads {torch.get_num_threads()}"
    )

    losses: dict[int, list[float]] = {s: [] for _, _, s in spans}
    sides: list[int] = []  # the grid side of the step being taken

    def step_fn(step: int):
        lo, hi, side = spans[int(torch.multinomial(weights, 1, generator=gen))]
        sides.append(side)
        idx = torch.randint(0, len(mean), (batch_size,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        y = torch.where(torch.rand(batch_size, generator=gen) < label_drop, md.NULL_CLASS, labels[idx])
        t = torch.randint(lo, hi, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with sdpa_kernel(SDPBackend.MATH), bf16_autocast():  # the CPU flash backward is slow in bf16
            pred = net(xt, timestep=t, class_labels=y).sample
            with torch.no_grad():
                target = teacher(xt, timestep=t, class_labels=y).sample if loss != "eps" else None
        return finetune_loss(loss, pred, noise, target, loss_weights[t])

    def describe(step: int, _losses: list[float]) -> str:
        per_side = ", ".join(f"s={s}: {np.mean(v[-20:]):.4f}" for s, v in losses.items() if v)
        return f"step {step + 1:5d}  loss (last 20 per grid side) {per_side}  {loop.elapsed():.0f}s"

    loop.after_step = lambda step, value: losses[sides[-1]].append(value)
    loop.describe = describe
    # eval mode: diffusers' label dropout would otherwise drop labels independently in every block
    net.eval()
    result = loop.run(step_fn)
    step = result.steps
    save_weights(
        ema,
        out_dir / "transformer.safetensors",
        base_model=model,
        steps=step,
        lr=lr,
        ema_decay=ema_decay,
        batch_size=batch_size,
        loss=loss,
    )
    summary = {
        "model": model,
        "steps": step,
        "seconds_this_run": result.seconds,
        "layout": vars(layout),
        "r_min": r_min,
        "r_max": r_max,
        "loss": loss,
        "pieces": spans,
        "params": n_params,
        "final_loss_by_side": {str(s): round(float(np.mean(v[-50:])), 5) for s, v in losses.items() if v},
    }
    (out_dir / "finetune_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"sparsedit finetune done: {summary}")
    return summary


def check(
    model: str = "mnist-dit",
    n: int = 200,
    seed: int = 0,
    weights: Path | None = None,
    out_dir: Path | None = None,
    command: str | None = None,
) -> dict:
    """Class accuracy and MACs of ``n`` generated digits: the original model, SparseDiT as initialised from it,
    and fine-tuned SparseDiT (the same seeds for all)."""
    _check_model(model)
    out_dir = Path(out_dir or results_dir(model))
    weights = Path(weights or out_dir / "transformer.safetensors")
    bundle = zoo.load(model)
    conds = bundle.conditions(n, seed)
    arms = {
        "original": methods.build("full"),
        "sparsedit, not fine-tuned": methods.build("sparsedit"),
        "sparsedit": methods.build("sparsedit", weights=str(weights)),
    }
    rows = {}
    for name, method in arms.items():
        with dsbench.attach(bundle.pipeline, method) as handle:
            t0 = time.perf_counter()
            images = bundle.sample(conds, seed)
            seconds = time.perf_counter() - t0
            report = handle.report()
        rows[name] = {
            "class_accuracy": bundle.alignment(images, conds)["class_accuracy"],
            "macs_per_image_cfg_counted": report["macs_cfg_counted"],
            "macs_attention_per_image_cfg_counted": report["macs_attention_cfg_counted"],
            "seconds": round(seconds, 1),
        }
    meta = arms["sparsedit"].weights_meta
    config, tokens = (
        arms["sparsedit"].config,
        (bundle.pipeline.transformer.config.sample_size // bundle.pipeline.transformer.config.patch_size) ** 2,
    )
    sides = [
        grid_side(pruning_rate(int(t), config.r_min, config.r_max), tokens) for t in bundle.pipeline.scheduler.timesteps
    ]
    result = {
        "model": model,
        "n": n,
        "seed": seed,
        "steps": bundle.sampler.steps,
        "guidance_scale": bundle.sampler.guidance_scale,
        "weights": str(weights.relative_to(REPO)) if weights.is_relative_to(REPO) else str(weights),
        "weights_meta": meta,
        "grid_sides": sides,
        "arms": rows,
        "threads": torch.get_num_threads(),
        "command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "check.json").write_text(json.dumps(result, indent=2) + "\n")
    o, s = rows["original"], rows["sparsedit"]
    table = "\n".join(
        f"| {k} | {r['class_accuracy']:.3f} | {r['macs_per_image_cfg_counted'] / 1e6:.2f} | "
        f"{r['macs_attention_per_image_cfg_counted'] / 1e6:.2f} | {r['seconds']} |"
        for k, r in rows.items()
    )
    r_range = f"[{meta.get('r_min')}, {meta.get('r_max')}]"
    (out_dir / "check.md").write_text(f"""# SparseDiT on {model}: class accuracy of generated digits

`{command}`

{n} generated digits (balanced classes, seed {seed}, the same seeds for every arm), DDIM {result["steps"]} steps,
CFG {result["guidance_scale"]}, classified by the bundle's domain classifier. SparseDiT weights: `{result["weights"]}`
(fine-tuned {meta.get("steps", "?")} steps, layout {meta.get("layout", "?")}, r ∈ {r_range}).
Sparse grid side per sampler call (i = 0 first): {sides} ({tokens} dense tokens).
MACs per generated image over the whole run, both CFG halves counted (M_lin, and attention M_attn separately).

| arm | class accuracy | M_lin (M MACs) | M_attn (M MACs) | seconds ({torch.get_num_threads()} thread(s)) |
|---|---|---|---|---|
{table}

MAC ratio original / SparseDiT: {o["macs_per_image_cfg_counted"] / s["macs_per_image_cfg_counted"]:.3f} (M_lin).
""")
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m dsbench.training.sparsedit", description="SparseDiT fine-tuning and check"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("finetune", help="fine-tune SparseDiT from an embedded model → results/sparsedit/MODEL/")
    p.add_argument("--model", default="mnist-dit", choices=MODELS)
    p.add_argument("--minutes", type=float, default=None, help="time budget (stop after this many minutes)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--r-min", type=float, default=0.61)
    p.add_argument("--r-max", type=float, default=0.86)
    p.add_argument(
        "--loss",
        default="eps",
        choices=LOSSES,
        help="eps: to the true noise (the paper); distill: to the frozen dense model's prediction; both",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50, help="steps between loss lines in the log")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/sparsedit/MODEL)")
    p.add_argument("--no-resume", action="store_true", help="ignore the checkpoint in the output folder")
    q = sub.add_parser("check", help="class accuracy + MACs, original vs SparseDiT → results/sparsedit/MODEL/check.md")
    q.add_argument("--model", default="mnist-dit", choices=MODELS)
    q.add_argument("-n", type=int, default=200)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--weights", type=Path, default=None, help="default OUT/transformer.safetensors")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--out", type=Path, default=None, help="output folder (default results/sparsedit/MODEL)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m dsbench.training.sparsedit " + shlex.join(argv)
    out = args.out or results_dir(args.model)
    if args.command == "finetune":
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "finetune_command.txt", "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n{command}\n")
        finetune(
            args.model,
            minutes=args.minutes,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            r_min=args.r_min,
            r_max=args.r_max,
            loss=args.loss,
            seed=args.seed,
            resume=not args.no_resume,
            log_every=args.log_every,
            out_dir=out,
        )
        return 0
    check(args.model, n=args.n, seed=args.seed, weights=args.weights, out_dir=out, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
