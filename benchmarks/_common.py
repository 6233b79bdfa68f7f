"""Shared pieces of the benchmark scripts (not a test module; no wall-clock asserts).

* a DiT-S-sized ``DiTTransformer2DModel`` with random weights (12 blocks, hidden 384, 256 tokens),
* ``Sampler``: the denoising loop of diffusers' ``DiTPipeline`` (batched CFG, DDIM with
  ``timestep_spacing="linspace"``) without the VAE; it has ``transformer`` and ``scheduler``
  attributes, so ``dsbench.attach(sampler, m)`` attaches exactly as to a pipeline (the wrapped
  ``set_timesteps`` starts each run),
* ``Report``: prints lines and keeps them, then writes results/benchmarks/<name>.txt and .json.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

import dsbench

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"

# DiT-S/2 at 256² (32×32 latent, patch 2 → 256 tokens), learned sigma (8 output channels)
DIT_S = dict(
    num_layers=12,
    num_attention_heads=6,
    attention_head_dim=64,
    sample_size=32,
    patch_size=2,
    in_channels=4,
    out_channels=8,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
)

DTYPES = ("bf16-autocast", "bf16", "fp32")


def default_dtype() -> str:
    """bf16 autocast where the CPU computes bf16 natively; fp32 elsewhere (emulated bf16 is ~8× slower)."""
    from dsbench.models.embedded.common import native_bf16

    return "bf16-autocast" if native_bf16() else "fp32"


def build_model(dtype: str, seed: int = 0) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**DIT_S).eval()
    model.requires_grad_(False)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model


def build_scheduler():
    from diffusers import DDIMScheduler

    # DiT's linear betas; "linspace" reproduces the DiT reference respacing (docs/evaluation.md#metrics)
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="linspace",
    )


def autocast_ctx(dtype: str):
    if dtype == "bf16-autocast":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class Sampler:
    """DiTPipeline's denoising loop (transformer calls + CFG + scheduler steps), no VAE."""

    def __init__(self, transformer, scheduler, *, batch: int, dtype: str, guidance_scale: float = 1.5, seed: int = 0):
        self.transformer = transformer
        self.scheduler = scheduler
        self.batch = batch
        self.dtype = dtype
        self.guidance_scale = guidance_scale
        g = torch.Generator().manual_seed(seed)
        cfg = transformer.config
        self.latent_channels = cfg.in_channels
        self.latents0 = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
        if dtype == "bf16":
            self.latents0 = self.latents0.to(torch.bfloat16)
        labels = torch.randint(0, 1000, (batch,), generator=g)
        self.class_labels = torch.cat([labels, torch.full((batch,), 1000)])  # [cond, null]
        self.call_seconds: list[float] = []  # per transformer call, last run
        self.sched_seconds = 0.0  # scheduler + guidance, last run

    def check_timesteps(self, steps: int) -> None:
        """The DiT reference respacing: t_k = round(k·999/(T−1)), first call at t = 999."""
        self.scheduler.set_timesteps(steps)
        expected = [round(k * 999 / (steps - 1)) for k in range(steps)][::-1] if steps > 1 else [999]
        got = [int(t) for t in self.scheduler.timesteps]
        if got != expected and steps > 1:
            raise RuntimeError(f"unexpected DDIM timesteps {got[:5]}... (expected {expected[:5]}...)")

    def run(self, steps: int) -> tuple[float, torch.Tensor]:
        """One sampling run; returns (seconds of the denoising loop, final latents)."""
        latent_channels, scale = self.latent_channels, self.guidance_scale
        latents = self.latents0.clone()
        self.call_seconds = []
        self.sched_seconds = 0.0
        gc.collect()
        gc.disable()
        try:
            with torch.no_grad(), autocast_ctx(self.dtype):
                t_start = time.perf_counter()
                self.scheduler.set_timesteps(steps)  # (attached: starts the run, drops the caches)
                x = torch.cat([latents, latents], 0)
                for t in self.scheduler.timesteps:
                    half = x[: len(x) // 2]
                    x = torch.cat([half, half], dim=0)
                    x = self.scheduler.scale_model_input(x, t)
                    timesteps = t[None].expand(x.shape[0])
                    c0 = time.perf_counter()
                    noise_pred = self.transformer(x, timestep=timesteps, class_labels=self.class_labels).sample
                    c1 = time.perf_counter()
                    eps = noise_pred[:, :latent_channels]
                    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
                    half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
                    eps = torch.cat([half_eps, half_eps], dim=0)
                    x = self.scheduler.step(eps, t, x).prev_sample  # learned sigma dropped, as DiTPipeline
                    self.call_seconds.append(c1 - c0)
                    self.sched_seconds += time.perf_counter() - c1
                seconds = time.perf_counter() - t_start
        finally:
            gc.enable()
        return seconds, x.chunk(2, dim=0)[0]


def tune_malloc() -> str:
    """glibc: serve large blocks from the heap and never trim it (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    By default glibc mmaps big blocks and unmaps them on free, so every large temporary is
    page-faulted in again (visible as minor faults and system time). Applies to both arms alike.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(-3, 256 * 2**20) == 1 and libc.mallopt(-1, 2**30) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    return (
        "malloc: glibc tuned for this process (mallopt M_MMAP_THRESHOLD=256 MiB, M_TRIM_THRESHOLD=1 GiB; both arms)"
        if ok
        else "malloc: mallopt failed; glibc defaults"
    )


@contextmanager
def usage():
    """Yields a dict filled on exit with process CPU, system seconds and minor page faults."""
    import resource

    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    info = {}
    try:
        yield info
    finally:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        info.update(
            cpu_seconds=time.process_time() - c0,
            sys_seconds=r1.ru_stime - r0.ru_stime,
            minor_faults=r1.ru_minflt - r0.ru_minflt,
        )


def machine_lines(args) -> list[str]:
    import diffusers

    from dsbench.machine import cpu_name

    cpu = cpu_name()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in info)
    except OSError:
        pass
    load = os.getloadavg()
    try:
        import subprocess

        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %ad %s", "--date=format:%Y-%m-%d %H:%M"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "harness", "methods"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        code = f"code: {head[:110]}" + ("  [uncommitted changes in harness/ or methods/]" if dirty else "")
    except Exception:  # no git
        code = "code: (git unavailable)"
    return [
        f"machine: {cpu} ({os.cpu_count()} logical CPUs; {flags}); torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, diffusers {diffusers.__version__}, python {platform.python_version()}",
        f"load average at start (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        + (
            "  [other processes share the CPU: timings are noisier; arms are interleaved]"
            if load[0] > 0.5 * (os.cpu_count() or 1)
            else ""
        ),
        code,
        f"command: {' '.join([Path(sys.executable).name] + sys.argv)}",
        f"args: {vars(args)}",
    ]


def dtype_line(dtype: str) -> str:
    return {
        "bf16-autocast": "dtype: fp32 weights, torch.autocast('cpu', bfloat16) around the whole loop "
        "(identical for both arms)",
        "bf16": "dtype: model weights and latents in bfloat16, no autocast (identical for both arms)",
        "fp32": "dtype: float32, no autocast (identical for both arms)",
    }[dtype]


def median(xs):
    return statistics.median(xs)


def spread(xs) -> str:
    return f"median {median(xs):.3f} s  (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


class Report:
    """print() that also keeps the lines; ``save`` writes <name>.txt and <name>.json."""

    def __init__(self, name: str):
        self.name = name
        self.lines: list[str] = []
        self.t0 = time.perf_counter()

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.lines.extend(line.splitlines() or [""])

    def save(self, data: dict) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self(f"total benchmark wall time: {time.perf_counter() - self.t0:.0f} s")
        self(f"written: {(RESULTS / (self.name + '.txt')).relative_to(ROOT)} and .json")
        (RESULTS / f"{self.name}.txt").write_text("\n".join(self.lines) + "\n")
        (RESULTS / f"{self.name}.json").write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "__dict__"):
        return repr(x)
    return str(x)


@contextmanager
def attached(target, method_name: str, **params):
    """dsbench.attach(target, methods.build(method_name, **params)) — a fresh method per attach."""
    from dsbench import methods

    with dsbench.attach(target, methods.build(method_name, **params)) as handle:
        yield handle
