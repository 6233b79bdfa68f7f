"""Device suite: every method on the real architectures, timed against ``full`` on whatever device is here.

On CUDA it builds the zoo's transformers at full size with random weights (no network: the configs in
``dsbench/models/configs``) in bfloat16 — DiT-XL/2 256, PixArt-α 256 and 512, FLUX.1-schnell and
Wan2.1-1.3B where the GPU's memory allows — and times with CUDA events. On a CPU it builds tiny configs of
the same classes (fp32, ``time.perf_counter``), so the same code runs in the tests; those numbers say
nothing about GPUs.

Per model and method: MACs (the engine's counter, the run itself), latency of the denoising loop (the
transformer over the scheduler's steps with the method attached, CFG as the model's pipeline runs it, no
text encoder or VAE) in runs interleaved with ``full`` (full, m, m, full, ...), speedup and speedup /
MAC-speedup, peak memory, and from one profiled run the share of time in the method's selection (host),
gathers, scatters and explicit softmax (materialised attention). ``diffsparse`` runs a DP schedule at
ToCa's MACs on ToCa-initialised costs (untrained, docs/methods/diffsparse.md); methods registered at run
time (``dsbench.methods.available()``) are included. Then ``torch.compile`` (docs/compile.md): outputs
against eager, graphs and graph breaks per denoiser call, compile time and compiled speedup.

``--minutes`` is a budget: models run in order, each gets its share of what is left, and what does not
fit is skipped and listed in the report (never silently).

    python benchmarks/device_suite.py --minutes 8                       # results/benchmarks/device/
    python benchmarks/device_suite.py --minutes 2 --models dit-xl-2-256 --methods full,toca,fora

Not a test: nothing is asserted about wall-clock time (tests/test_device_suite.py checks the report).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dsbench
from dsbench import methods
from dsbench.machine import cpu_name
from dsbench.macs import level_space_of
from dsbench.methods.base import families
from dsbench.methods.diffsparse import dp
from dsbench.methods.diffsparse.cost import toca_fresh_ratios
from dsbench.methods.diffsparse.schedule import export_schedule
from dsbench.models.architectures import architecture

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("dit-xl-2-256", "pixart-alpha-256", "pixart-alpha-512", "flux-schnell", "wan2.1-1.3b")
# measured first (in this order) when the budget is short; methods registered later follow
PRIORITY = ("full", "toca", "fora", "diffsparse", "taylorseer", "duca", "deepcache", "steps")
COMPILE_METHODS = ("full", "toca", "fora", "taylorseer", "diffsparse")
BACKENDS = ("inductor", "aot_eager", "eager", "none")
# the same classes, shrunk: (config overrides, latent of one image, text tokens)
TINY = {
    "dit": (dict(num_layers=2, num_attention_heads=2, attention_head_dim=8, sample_size=8), None, 0),
    "pixart": (
        dict(
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            sample_size=8,
            cross_attention_dim=16,
            caption_channels=12,
        ),
        None,
        6,
    ),
    "flux": (
        dict(
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            in_channels=16,
            axes_dims_rope=[4, 6, 6],
        ),
        (64, 16),
        8,
    ),
    "wan": (
        dict(
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=32,
            rope_max_seq_len=32,
        ),
        (4, 2, 8, 8),
        5,
    ),
}
# op names whose time is a phase of the token cache (torch.profiler, self time)
PHASE_OPS = {
    "gather": ("aten::gather", "aten::index_select", "aten::take_along_dim"),
    "scatter": ("aten::scatter", "aten::scatter_", "aten::index_copy_", "aten::index_put_"),
    "sort_topk": ("aten::topk", "aten::sort", "aten::argsort"),
    "softmax": ("aten::softmax", "aten::_softmax"),
    "sdpa": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention"),
}


# -- the device -------------------------------------------------------------------------------------------
@dataclass
class Device:
    kind: str  # "cuda" or "cpu"
    dtype: torch.dtype

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timer(self):
        """start() / stop() → seconds: CUDA events on a GPU, perf_counter on a CPU."""
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            return (a.record, lambda: (b.record(), b.synchronize(), a.elapsed_time(b) / 1e3)[-1])
        box = {}
        return (lambda: box.setdefault("t", time.perf_counter()), lambda: time.perf_counter() - box["t"])

    def describe(self) -> dict:
        import diffusers

        info = {
            "device": torch.cuda.get_device_name(0) if self.cuda else f"CPU: {cpu_name()}",
            "kind": self.kind,
            "dtype": str(self.dtype).removeprefix("torch."),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "driver": None,
            "load_average": list(os.getloadavg()),
            "commit": _git("log", "-1", "--format=%h %ad", "--date=format:%Y-%m-%d %H:%M"),
            "uncommitted_changes": bool(_git("status", "--porcelain", "--", "harness", "methods", "benchmarks")),
        }
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        return info


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git(*args: str) -> str | None:
    return _run(["git", "-C", str(ROOT), *args])


# -- models and the denoising loop -----------------------------------------------------------------------
def build_transformer(name: str, device: Device, tiny: bool) -> torch.nn.Module:
    """The architecture's class from its shipped config (shrunk when ``tiny``), random weights, on the device."""
    import diffusers

    config = architecture(name).config()
    cls = getattr(diffusers, config.pop("_class_name"))
    config.pop("_source", None)
    if tiny:
        side = config.get("sample_size")
        config.update(TINY[architecture(name).family][0])
        if side:  # PixArt-α 512 stays twice PixArt-α 256's latent side
            config["sample_size"] = TINY[architecture(name).family][0]["sample_size"] * side // 32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(device.dtype)  # built in the compute dtype: FLUX in fp32 would not fit first
    try:
        with torch.device(device.kind):
            model = cls.from_config(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    return model


def param_bytes(name: str, dtype: torch.dtype) -> int:
    from dsbench.models.architectures import meta_model

    return sum(p.numel() for p in meta_model(name).parameters()) * torch.finfo(dtype).bits // 8


class Denoiser:
    """The family pipeline's denoising loop without text encoder and VAE; ``transformer`` and ``scheduler``
    attributes, so ``dsbench.attach(denoiser, m)`` attaches as to the pipeline (set_timesteps starts a run).
    DiT and PixArt batch [cond, uncond] (CFG 4.0 / 4.5), Wan runs them as two calls under ``cache_context``,
    FLUX-schnell has no CFG."""

    def __init__(self, name: str, transformer, device: Device, steps: int, tiny: bool, seed: int = 0):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

        arch = architecture(name)
        self.family, self.transformer, self.device, self.steps = arch.family, transformer, device, steps
        self.after_step = None  # called after each step (the compile check counts graphs per step)
        cfg = transformer.config
        if tiny:
            latent, text = TINY[arch.family][1], TINY[arch.family][2]
            latent = latent or (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        else:
            latent, text = arch.latent, arch.text_tokens
        g = torch.Generator().manual_seed(seed)
        rand = lambda *shape: torch.randn(*shape, generator=g).to(device.kind, device.dtype)  # noqa: E731
        self.latents0 = rand(1, *latent)
        self.cond: dict = {}
        if self.family == "dit":
            self.scheduler = DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
            self.cond = {"class_labels": torch.tensor([207, 1000], device=device.kind)}  # [cond, null class]
        elif self.family == "pixart":
            self.scheduler = DPMSolverMultistepScheduler()
            prompt = rand(1, text, cfg.caption_channels)
            emb = torch.cat([prompt, torch.zeros_like(prompt)])  # [prompt, empty negative prompt]
            self.cond = {
                "encoder_hidden_states": emb,
                "encoder_attention_mask": torch.ones(2, text, device=device.kind),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
            }
        elif self.family == "flux":
            self.scheduler = FlowMatchEulerDiscreteScheduler()
            side = int(latent[0] ** 0.5)
            ids = torch.zeros(side, side, 3)
            ids[..., 1], ids[..., 2] = torch.arange(side)[:, None], torch.arange(side)[None, :]
            self.cond = {
                "encoder_hidden_states": rand(1, text, cfg.joint_attention_dim),
                "pooled_projections": rand(1, cfg.pooled_projection_dim),
                "img_ids": ids.reshape(-1, 3).to(device.kind),
                "txt_ids": torch.zeros(text, 3, device=device.kind),
                "guidance": torch.full((1,), 3.5, device=device.kind) if cfg.guidance_embeds else None,
            }
        else:
            self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
            self.texts = (rand(1, text, cfg.text_dim), rand(1, text, cfg.text_dim))  # prompt, negative prompt

    def call(self, x, t):
        """The model's noise (or flow) prediction at ``t`` for latents ``x``, guidance applied."""
        tr = self.transformer
        if self.family == "dit":
            out = tr(torch.cat([x, x]), timestep=t.expand(2), return_dict=False, **self.cond)[0][:, : x.shape[1]]
            cond, uncond = out.chunk(2)
            return uncond + 4.0 * (cond - uncond)
        if self.family == "pixart":
            out = tr(torch.cat([x, x]), timestep=t.expand(2), return_dict=False, **self.cond)[0][:, : x.shape[1]]
            cond, uncond = out.chunk(2)
            return uncond + 4.5 * (cond - uncond)
        if self.family == "flux":
            return tr(x, timestep=(t / 1000).expand(1).to(x.dtype), return_dict=False, **self.cond)[0]
        preds = []
        for branch, text in zip(("cond", "uncond"), self.texts):
            with tr.cache_context(branch):
                preds.append(tr(x, timestep=t.expand(1), encoder_hidden_states=text, return_dict=False)[0])
        return preds[1] + 5.0 * (preds[0] - preds[1])

    def run(self) -> tuple[float, torch.Tensor]:
        """One denoising loop: (seconds, final latents)."""
        start, stop = self.device.timer()
        x = self.latents0.clone()
        self.device.sync()
        with torch.no_grad():
            start()
            self.scheduler.set_timesteps(self.steps)  # attached: starts the run (and step reduction)
            for t in self.scheduler.timesteps:
                pred = self.call(x, t.to(self.device.kind))
                x = self.scheduler.step(pred, t, x, return_dict=False)[0]
                if self.after_step is not None:
                    self.after_step()
            seconds = stop()
        return seconds, x


def family_methods(family: str, wanted: list[str] | None) -> tuple[list[str], list[dict]]:
    """Methods to measure on this family (priority order, then the rest registered), and the skipped ones."""
    names = [n for n in PRIORITY if n in methods.available()]
    names += sorted(set(methods.available()) - set(names))
    if wanted is not None:
        names = [n for n in names if n in wanted]
    keep, skipped = [], []
    for n in names:
        if family not in families(n):
            skipped.append({"method": n, "reason": f"does not apply to {family}"})
        elif n != "diffsparse" and _build_error(n):
            skipped.append({"method": n, "reason": f"not buildable with defaults: {_build_error(n)}"})
        else:
            keep.append(n)
    return keep, skipped


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _build_error(name: str) -> str | None:
    try:
        methods.build(name)
    except Exception as e:  # e.g. a method that needs weights or files not given here
        return _one_line(e)
    return None


def dp_schedule(den: Denoiser, toca_report: dict, full_macs: float, folder: Path) -> Path:
    """DiffSparse at ToCa's M_lin: the DP on ToCa-initialised costs P = |k/K − ρ_ToCa| (no training)."""
    x = den.latents0
    steps = toca_report["num_steps"]
    one = {"dit": dict(class_labels=den.cond.get("class_labels", torch.zeros(1))[:1].long())}.get(den.family)
    if den.family == "pixart":
        one = {k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in den.cond.items()}
    elif den.family == "flux":
        one = den.cond
    elif den.family == "wan":
        one = {"encoder_hidden_states": den.texts[0]}
    inputs = {"hidden_states": x, "timestep": torch.zeros(1, device=x.device).long(), **one}
    if den.family == "flux":
        inputs["timestep"] = torch.zeros(1, device=x.device, dtype=x.dtype)
    space = level_space_of(den.transformer, steps, inputs=inputs)
    ratios, _ = toca_fresh_ratios(toca_report["schedule"], space)
    costs = np.abs(space.levels[None, :] - ratios[:, None])
    lo, hi = space.ratio_range()
    R = float(np.clip(1.0 - toca_report["macs_cfg_not_counted"] / full_macs, lo, hi))
    budget = space.budget(R)
    levels = dp.solve(costs, space.weights, budget, window=space.window(budget))
    return export_schedule(
        folder / f"{den.family}-schedule.json", space, levels, budget_ratio=R, config={"init": "toca", "trained": False}
    )


# -- measuring -------------------------------------------------------------------------------------------
def timed(den: Denoiser, method, *, peak: bool) -> tuple[float, torch.Tensor, dict, int | None]:
    with dsbench.attach(den, method) as handle:
        if peak and den.device.cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, x = den.run()
        report = handle.report()
    mem = torch.cuda.max_memory_allocated() if (peak and den.device.cuda) else None
    return seconds, x, report, mem


def profile(den: Denoiser, method) -> dict:
    """Shares of one run's time (torch.profiler self time of ops, device time on CUDA) by phase."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if den.device.cuda else [])
    with dsbench.attach(den, method) as handle, torch_profile(activities=activities) as prof:
        seconds, _ = den.run()
    attr = "self_device_time_total" if den.device.cuda else "self_cpu_time_total"
    times = {e.key: getattr(e, attr) for e in prof.key_averages()}
    total = sum(times.values()) or 1.0
    shares = {phase: sum(times.get(op, 0.0) for op in ops) / total for phase, ops in PHASE_OPS.items()}
    shares["selection_host"] = handle.report()["selection_seconds"] / seconds
    return {"seconds": seconds, "time": "device (CUDA kernels)" if den.device.cuda else "CPU", "shares": shares}


def measure(den: Denoiser, method_fn, full_fn, repeats: int, do_profile: bool) -> dict:
    """``repeats`` pairs of runs interleaved with full (full, m, m, full, ...) after one warm-up of each."""
    gc.collect()
    timed(den, full_fn(), peak=False)
    _, _, report, _ = timed(den, method_fn(), peak=False)
    times: dict[str, list[float]] = {"full": [], "method": []}
    mems, out = {}, {}
    for r in range(repeats):
        for arm in ("full", "method") if r % 2 == 0 else ("method", "full"):
            s, x, rep, mem = timed(den, full_fn() if arm == "full" else method_fn(), peak=r == 0)
            times[arm].append(s)
            if r == 0:
                mems[arm], out[arm] = mem, x
            if arm == "method":
                report = rep
    result = {
        "seconds": times["method"],
        "full_seconds": times["full"],
        "report": report,
        "peak_memory": mems["method"],
        "finite": bool(torch.isfinite(out["method"]).all()),
        "latents": out["method"],
    }
    if do_profile:
        result["profile"] = profile(den, method_fn())
    return result


def row(label: str, m: dict, full_macs: float, full_attn: float) -> dict:
    rep = m["report"]
    mac_ratio = rep["macs_cfg_not_counted"] / full_macs
    pairs = [f / s for f, s in zip(m["full_seconds"], m["seconds"])]
    speedup = statistics.median(pairs)
    return {
        "method": label,
        "config": rep["config"],
        "steps_run": rep["num_steps"],
        "macs": rep["macs_cfg_not_counted"],
        "macs_attention": rep["macs_attention_cfg_not_counted"],
        "mac_ratio": mac_ratio,
        "attention_mac_ratio": rep["macs_attention_cfg_not_counted"] / full_attn if full_attn else None,
        "seconds": m["seconds"],
        "full_seconds": m["full_seconds"],
        "latency_s": statistics.median(m["seconds"]),
        "full_latency_s": statistics.median(m["full_seconds"]),
        "speedup": speedup,
        "mac_speedup": 1.0 / mac_ratio,
        "speedup_per_mac_speedup": speedup * mac_ratio,
        "peak_memory_bytes": m["peak_memory"],
        "selection_seconds": rep["selection_seconds"],
        "finite": m["finite"],
        "profile": m.get("profile"),
    }


# -- torch.compile ----------------------------------------------------------------------------------------
class CountingBackend:
    """A dynamo backend that counts graphs compiled and graph executions around a real backend."""

    def __init__(self, backend: str):
        self.backend, self.graphs, self.calls = backend, 0, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        compiled = torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run


def graph_break_reasons() -> dict[str, int]:
    """Dynamo's graph-break counter, by the first line of each reason (and its developer context)."""
    from torch._dynamo.utils import counters

    out: Counter = Counter()
    for raw, n in counters["graph_break"].items():
        reason = re.sub(r" at 0x[0-9a-f]+", "", raw)  # object addresses differ between runs
        lines = reason.splitlines()
        detail = next((line.strip() for line in lines if "Developer debug context" in line), "")
        out[(lines[0][:120] + (f" ({detail.removeprefix('Developer debug context: ')[:120]})" if detail else ""))] += n
    return dict(out)


def compile_check(den: Denoiser, label, method_fn, eager: torch.Tensor, eager_macs: float, backend, repeats, order):
    """Attach then ``torch.compile`` (order "attach-compile") or the reverse ("compile-attach"): outputs
    against eager, graphs per denoiser call, graph breaks, compile time, compiled vs eager speedup."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counting = CountingBackend(backend)
    original = den.transformer
    entry = {"method": label, "order": order, "backend": backend}
    try:
        with contextlib.ExitStack() as stack:
            if order == "attach-compile":
                handle = stack.enter_context(dsbench.attach(den, method_fn()))
                compiled = torch.compile(original, backend=counting)
            else:
                compiled = torch.compile(original, backend=counting)
                den.transformer = compiled
                handle = stack.enter_context(dsbench.attach(den, method_fn()))
            den.transformer = compiled
            t0 = time.perf_counter()
            den.run()  # compiles
            entry["compile_seconds"] = time.perf_counter() - t0
            graphs_after_first = counting.graphs
            per_step = [counting.calls]
            den.after_step = lambda: per_step.append(counting.calls)
            try:
                _, out = den.run()
            finally:
                den.after_step = None
            graphs = np.diff(per_step)
            report = handle.report()
            calls = len(report["macs_per_step"]) * len(report["branches"])
            entry["graphs_compiled"] = counting.graphs
            entry["recompiled_in_second_run"] = counting.graphs - graphs_after_first
            entry["graphs_per_step"] = graphs.tolist()  # graphs run at each step of the second (compiled) run
            entry["graphs_per_call"] = float(graphs.sum()) / calls
            entry["eager_steps"] = int((graphs == 0).sum())  # steps that ran no graph: dynamo fell back to eager
            # a break inside the transformer splits its graph: graphs run per call - 1 (the engine's begin_call
            # and end_call run eagerly around it and split nothing)
            entry["graph_breaks_per_call"] = max(entry["graphs_per_call"] - 1.0, 0.0)
            entry["graph_break_sites"] = graph_break_reasons()  # as traced, both runs
            entry["macs_equal_eager"] = report["macs_cfg_not_counted"] == eager_macs
            diff = (out.float() - eager.float()).abs().max().item()
            rel = ((out.float() - eager.float()).norm() / eager.float().norm().clamp_min(1e-12)).item()
            tol = 1e-4 if den.device.dtype == torch.float32 else 3e-2
            entry.update(max_abs_diff=diff, rel_l2=rel, equal_within_tolerance=rel <= tol, tolerance_rel_l2=tol)
            times = {"eager": [], "compiled": []}
            for r in range(repeats):
                for arm in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
                    den.transformer = original if arm == "eager" else compiled
                    times[arm].append(den.run()[0])
            entry["eager_seconds"], entry["compiled_seconds"] = times["eager"], times["compiled"]
            if repeats:
                entry["compiled_speedup"] = statistics.median(e / c for e, c in zip(times["eager"], times["compiled"]))
            entry["status"] = "ok" if entry["equal_within_tolerance"] else "outputs differ from eager"
    except Exception as e:  # a refusal or a compiler failure: reported, never hidden
        entry["status"] = f"failed: {_one_line(e)}"
    finally:
        den.transformer = original
        torch._dynamo.reset()
    return entry


# -- the suite ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of the whole suite (> 0)")
    p.add_argument("--out", default="results/benchmarks/device", help="folder of suite.json and suite.md")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--methods", default=None, help="comma-separated subset of the registered methods (default all)")
    p.add_argument("--repeats", type=int, default=3, help="timed pairs (method, full) per method, >= 1")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: each model's own, e.g. DiT 50)")
    p.add_argument(
        "--compile-backend",
        default=None,
        help=f"one of {', '.join(BACKENDS)}; default inductor on CUDA, eager on CPU (graph breaks and outputs, "
        "no compiled speedup worth reporting)",
    )
    p.add_argument("--compile-methods", default=",".join(COMPILE_METHODS), help="methods the compile check runs")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled run per method (phase shares)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    problems = []
    if not args.minutes > 0:
        problems.append(f"--minutes must be > 0, got {args.minutes}")
    if args.repeats < 1:
        problems.append(f"--repeats must be >= 1, got {args.repeats}")
    if args.steps is not None and args.steps < 2:
        problems.append(f"--steps must be >= 2, got {args.steps}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        problems.append(f"--models: unknown {', '.join(bad) or '(none given)'}; allowed: {', '.join(MODELS)}")
    for flag in ("methods", "compile_methods"):
        value = getattr(args, flag)
        if value is not None:
            names = [m.strip() for m in value.split(",") if m.strip()]
            bad = [m for m in names if m not in methods.available()]
            if bad:
                problems.append(
                    f"--{flag.replace('_', '-')}: unknown {', '.join(bad)}; allowed: {', '.join(methods.available())}"
                )
            setattr(args, flag, names)
    if args.compile_backend is not None and args.compile_backend not in BACKENDS:
        problems.append(f"--compile-backend must be one of {', '.join(BACKENDS)}, got {args.compile_backend!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA device is available here")
    if problems:
        p.error("; ".join(problems))
    return args


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def run_model(name, args, device, tiny, budget, share_end, folder, log) -> dict:
    """Every method that fits by ``share_end`` (seconds of budget left when this model must be done)."""
    arch = architecture(name)
    entry: dict = {"model": name, "config": "tiny" if tiny else "full-size", "skipped": []}
    t0 = time.perf_counter()
    transformer = build_transformer(name, device, tiny)
    steps = args.steps or arch.default_steps
    den = Denoiser(name, transformer, device, steps, tiny)
    entry.update(
        cls=type(transformer).__name__,
        params=sum(p.numel() for p in transformer.parameters()),
        steps=steps,
        family=arch.family,
        latent=list(den.latents0.shape[1:]),
        build_seconds=time.perf_counter() - t0,
    )
    names, entry["skipped"] = family_methods(arch.family, args.methods)
    full_s, x_full, full_report, _ = timed(den, methods.build("full"), peak=False)  # warm-up and the MAC base
    full_s, x_full, full_report, _ = timed(den, methods.build("full"), peak=False)
    full_macs, full_attn = full_report["macs_cfg_not_counted"], full_report["macs_attention_cfg_not_counted"]
    entry["full_run_seconds"] = full_s
    per_method = full_s * (2 + 2 * args.repeats + (0 if args.no_profile else 1.5)) + 0.5
    log(
        f"{name}: {entry['cls']} ({entry['config']}, {entry['params'] / 1e6:.1f} M params), {steps} steps, "
        f"full run {full_s:.3f} s; ~{per_method:.1f} s per method"
    )
    entry["rows"], latents, reports = [], {"full": x_full}, {"full": full_report}
    for n in names:
        if budget.left() - per_method < share_end:
            entry["skipped"].append({"method": n, "reason": f"time budget (~{per_method:.1f} s per method)"})
            continue
        fn = lambda n=n: methods.build(n)  # noqa: E731
        if n == "diffsparse":
            if "toca" not in reports:
                entry["skipped"].append({"method": n, "reason": "its DP schedule is matched to toca, not measured"})
                continue
            try:
                path = dp_schedule(den, reports["toca"], full_macs, folder)
            except ValueError as e:
                entry["skipped"].append({"method": n, "reason": f"DP schedule: {str(e).splitlines()[0][:200]}"})
                continue
            fn = lambda path=path: methods.build("diffsparse", schedule=str(path))  # noqa: E731
        try:
            m = measure(den, fn, lambda: methods.build("full"), args.repeats, not args.no_profile)
        except Exception as e:  # one method's failure is reported, the suite goes on
            entry["skipped"].append({"method": n, "reason": f"failed: {_one_line(e)}"})
            log(f"  {n:12s} failed: {_one_line(e)}")
            continue
        reports[n], latents[n] = m["report"], m["latents"]
        r = row(n, m, full_macs, full_attn)
        entry["rows"].append(r)
        log(
            f"  {n:12s} MAC ratio {r['mac_ratio']:.3f}  latency {r['latency_s'] * 1e3:9.2f} ms  "
            f"speedup {r['speedup']:.3f}  / MAC speedup {r['speedup_per_mac_speedup']:.3f}"
        )
    entry["_den"], entry["_latents"] = den, latents  # for the compile section; dropped before the report
    return entry


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    kind = "cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu"
    device = Device(kind, torch.bfloat16 if kind == "cuda" else torch.float32)
    tiny = kind == "cpu"
    backend = args.compile_backend or ("inductor" if device.cuda else "eager")
    budget = Budget(args.minutes * 60)
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    info = device.describe()
    log(
        f"device suite on {info['device']} ({info['dtype']}), torch {info['torch']}, diffusers {info['diffusers']}, "
        f"budget {args.minutes} min" + ("  [CPU: tiny configs of the same classes, not GPU figures]" if tiny else "")
    )
    compile_share = 0.0 if backend == "none" else 0.3
    reserve = budget.seconds * compile_share
    result = {
        "suite": "device_suite",
        "command": " ".join(["python", "benchmarks/device_suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "configs": "tiny (CPU)" if tiny else "full-size",
        "budget_seconds": budget.seconds,
        "timing": "CUDA events around the loop" if device.cuda else "time.perf_counter around the loop",
        "models": [],
        "skipped_models": [],
    }
    models = list(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(models):
            if device.cuda:
                need, free = param_bytes(name, device.dtype), torch.cuda.mem_get_info()[0]
                if need * 1.3 > free:
                    result["skipped_models"].append(
                        {
                            "model": name,
                            "reason": f"memory: weights {need / 2**30:.1f} GiB (+30 %), free {free / 2**30:.1f} GiB",
                        }
                    )
                    continue
            left_models = len(models) - i
            share_end = reserve + (budget.left() - reserve) * (left_models - 1) / left_models
            if budget.left() - share_end < 5:
                result["skipped_models"].append({"model": name, "reason": "time budget"})
                continue
            try:
                entry = run_model(name, args, device, tiny, budget, share_end, Path(tmp), log)
            except Exception as e:  # e.g. out of memory while building: listed, the next model runs
                result["skipped_models"].append({"model": name, "reason": f"failed: {_one_line(e)}"})
                log(f"{name}: failed: {_one_line(e)}")
                gc.collect()
                if device.cuda:
                    torch.cuda.empty_cache()
                continue
            result["models"].append(entry)
            if entry is not result["models"][0]:
                _drop_model(entry)
        result["compile"] = compile_section(
            result["models"][0] if result["models"] else None, args, backend, budget, log
        )
        for entry in result["models"]:
            _drop_model(entry)
    result["elapsed_seconds"] = budget.seconds - budget.left()
    (out / "suite.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "suite.md").write_text(markdown(result))
    log(f"written: {out / 'suite.json'} and suite.md ({result['elapsed_seconds']:.0f} s)")
    return result


def _drop_model(entry: dict) -> None:
    """Free a model's weights once its rows are measured (the next one may need the memory)."""
    for key in ("_den", "_latents"):
        entry.pop(key, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compile_section(entry, args, backend: str, budget: Budget, log) -> dict:
    section = {"backend": backend, "model": entry and entry["model"], "methods": [], "skipped": []}
    if backend == "none" or entry is None:
        section["skipped"].append({"method": "*", "reason": "--compile-backend none" if entry else "no model ran"})
        return section
    den, latents = entry["_den"], entry["_latents"]
    section["note"] = (
        "compiled speedup with backend 'eager' measures dynamo's overhead only (no kernels are generated); "
        "run with --compile-backend inductor for the compiled speedup"
        if backend != "inductor"
        else "inductor: kernels generated by torch.compile"
    )
    by_name = {r["method"]: r for r in entry["rows"]}
    cost = 10.0  # seconds one check takes: updated by each check
    for n in args.compile_methods:
        # compile-then-attach differs only in how attach finds the module: checked once, on full
        for order in ("attach-compile", "compile-attach") if n == "full" else ("attach-compile",):
            if n not in latents:
                section["skipped"].append({"method": n, "order": order, "reason": "not measured eagerly"})
                continue
            if budget.left() < cost:
                section["skipped"].append(
                    {"method": n, "order": order, "reason": f"time budget (~{cost:.0f} s a check)"}
                )
                continue
            schedule = by_name[n]["config"].get("schedule") if n == "diffsparse" else None
            fn = (
                (lambda s=schedule: methods.build("diffsparse", schedule=s))
                if schedule
                else (lambda n=n: methods.build(n))
            )
            t0 = time.perf_counter()
            repeats = 1 if budget.left() > 2 * cost else 0
            c = compile_check(den, n, fn, latents[n], by_name[n]["macs"], backend, repeats, order)
            cost = max(cost, time.perf_counter() - t0)
            section["methods"].append(c)
            log(
                f"  compile {n:12s} {order:15s} {c['status']}; graphs/call {_f(c.get('graphs_per_call'), '.2f')}, "
                f"steps run eagerly {c.get('eager_steps')}, compiled speedup {_f(c.get('compiled_speedup'))}"
            )
    return section


def _sum_reasons(entries: list[dict]) -> dict[str, int]:
    total: Counter = Counter()
    for e in entries:
        total.update(e.get("graph_break_sites", {}))
    return dict(total.most_common())


# -- the Markdown report -----------------------------------------------------------------------------------
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _f(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    m = result["machine"]
    tiny = result["configs"].startswith("tiny")
    out = [
        "# Device suite" + (" — CPU, tiny configs (not GPU figures)" if tiny else ""),
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {m['device']}; CPU {m['cpu']} ({m['cpu_count']} logical, {m['torch_threads']} torch threads); "
        f"dtype {m['dtype']}; torch {m['torch']} (CUDA {m['cuda']}, driver {m['driver']}); diffusers {m['diffusers']}; "
        f"python {m['python']}; commit {m['commit']}"
        f"{' (with uncommitted changes)' if m['uncommitted_changes'] else ''}; "
        f"load average {', '.join(f'{x:.2f}' for x in m['load_average'])}  ",
        f"Models: {result['configs']} random-weight transformers of the zoo's classes; timing: {result['timing']}, "
        f"each method interleaved with `full`; speedup = median of per-pair full/method ratios; MAC ratio = M_lin "
        f"method / full (the engine's counter, one CFG pass); budget {result['budget_seconds'] / 60:.1f} min, "
        f"used {result['elapsed_seconds'] / 60:.1f} min.",
        "",
    ]
    if tiny:
        out += [
            "!!! warning",
            "    Tiny models on a CPU: per-layer Python overhead dominates and the ratios below say nothing about",
            "    a GPU at full size. Run the same command on a CUDA machine for those.",
            "",
        ]
    for e in result["models"]:
        out += [
            f"## {e['model']} ({e['cls']}, {e['config']}, {e['params'] / 1e6:.2f} M parameters, {e['steps']} steps)",
            "",
            "| method | MAC ratio | latency ms | full ms | speedup | MAC speedup | speedup / MAC speedup | peak memory "
            "MiB | selection (host) | gather | scatter | sort/topk | softmax |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in e["rows"]:
            sh = (r["profile"] or {}).get("shares", {})
            mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
            out.append(
                f"| {r['method']} | {r['mac_ratio']:.3f} | {r['latency_s'] * 1e3:.2f} "
                f"| {r['full_latency_s'] * 1e3:.2f} | {r['speedup']:.3f} | {r['mac_speedup']:.3f} "
                f"| {r['speedup_per_mac_speedup']:.3f} | {_f(mem, '.0f')} "
                f"| {_pct(sh.get('selection_host'))} | {_pct(sh.get('gather'))} | {_pct(sh.get('scatter'))} "
                f"| {_pct(sh.get('sort_topk'))} | {_pct(sh.get('softmax'))} |"
            )
        if e["skipped"]:
            out += ["", "Skipped: " + "; ".join(f"{s['method']} ({s['reason']})" for s in e["skipped"])]
        out.append("")
    if result["skipped_models"]:
        out += ["Skipped models: " + "; ".join(f"{s['model']} ({s['reason']})" for s in result["skipped_models"]), ""]
    c = result.get("compile", {})
    out += [f"## torch.compile ({c.get('backend')}, {c.get('model')})", "", c.get("note", ""), ""]
    out += [
        "| method | order | status | rel. L2 to eager | MACs as eager | graphs compiled | graphs run per call "
        "| steps run eagerly | graph breaks per call | compile s | compiled speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in c.get("methods", []):
        out.append(
            f"| {r['method']} | {r['order']} | {r['status']} | {_f(r.get('rel_l2'), '.2e')} "
            f"| {r.get('macs_equal_eager', '–')} "
            f"| {r.get('graphs_compiled', '–')} | {_f(r.get('graphs_per_call'), '.2f')} | {r.get('eager_steps', '–')} "
            f"| {_f(r.get('graph_breaks_per_call'), '.2f')} "
            f"| {_f(r.get('compile_seconds'), '.1f')} | {_f(r.get('compiled_speedup'))} |"
        )
    if c.get("skipped"):
        out += [
            "",
            "Skipped: " + "; ".join(f"{s['method']} {s.get('order', '')} ({s['reason']})" for s in c["skipped"]),
        ]
    if c.get("methods"):
        out += [
            "",
            "Graph-break sites traced, by reason (summed over the checks): "
            + "; ".join(f"{k}: {v}" for k, v in _sum_reasons(c["methods"]).items()),
        ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
