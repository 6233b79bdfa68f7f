"""Overhead of the executor: ``full`` attached vs the plain diffusers model (goal: ratio <= 1.03).

Same model instance, same weights, same inputs. The plain arm runs diffusers' own
``DiTTransformer2DModel`` forward; the attached arm runs it under ``dsbench.attach(sampler,
methods.build("full"))`` — per-instance block overrides, MAC-counting forward hooks on every
Linear/Conv, per-call bookkeeping. Attaching and detaching happen around each timed run and
are not timed. Timed: the denoising loop only (set_timesteps, transformer calls, CFG
combination, DDIM steps). Runs are interleaved ABBA (plain, attached, attached, plain, ...)
after untimed warm-up runs of each arm; the headline uses medians.

    python benchmarks/attach_overhead.py              # defaults, writes results/benchmarks/attach_overhead.*
    python benchmarks/attach_overhead.py --threads 0 --repeats 20

Not a test: nothing is asserted about wall-clock time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# _common.py beside this script (dsbench itself: `pip install -e .` of this checkout)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    DIT_S,
    DTYPES,
    Report,
    Sampler,
    attached,
    build_model,
    build_scheduler,
    default_dtype,
    dtype_line,
    machine_lines,
    median,
    spread,
    tune_malloc,
)

import dsbench  # noqa: E402

GOAL = 1.03
ARMS = ("plain", "attached")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=6, help="timed runs per arm (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per arm before timing")
    p.add_argument("--steps", type=int, default=8, help="DDIM steps per run (every call costs the same)")
    p.add_argument(
        "--call-pairs",
        type=int,
        default=40,
        help="phase 2: transformer calls per arm, alternated call by call between two copies of "
        "the model with identical weights (one attached); 0 skips it",
    )
    p.add_argument("--batch", type=int, default=8, help="images per call (CFG doubles the rows)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=default_dtype(),
        help="default: bf16-autocast on CPUs with native bf16, else fp32",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on this shared 2-core machine 2 threads are "
        "slower and several times noisier; 0 = torch default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mallopt",
        action="store_true",
        help="tune glibc malloc (no mmap/unmap of large blocks) for both arms; default: glibc defaults",
    )
    p.add_argument("--out", default="attach_overhead", help="basename under results/benchmarks/")
    return p.parse_args()


def run_arm(sampler: Sampler, arm: str, steps: int) -> dict:
    cpu0 = time.process_time()
    if arm == "plain":
        seconds, latents = sampler.run(steps)
        report = None
    else:
        with attached(sampler, "full") as h:
            cpu0 = time.process_time()
            seconds, latents = sampler.run(steps)
            report = h.report()
    cpu = time.process_time() - cpu0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "call_seconds": list(sampler.call_seconds),
        "sched_seconds": sampler.sched_seconds,
        "latents": latents,
        "report": report,
    }


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    malloc_line = tune_malloc() if args.mallopt else "malloc: glibc defaults (see --mallopt)"
    out = Report(args.out)
    out("=" * 100)
    out("Attach overhead: `full` attached vs the plain diffusers model — DiT-S-sized DiTTransformer2DModel")
    out("=" * 100)
    for line in machine_lines(args):
        out(line)
    out(f"model: {DIT_S}  (12 blocks, hidden 384, 256 tokens, random weights)")
    out(
        f"batch: {args.batch} images + CFG batched = {2 * args.batch} rows per call; DDIMScheduler "
        f"timestep_spacing='linspace', {args.steps} steps per run"
    )
    out(dtype_line(args.dtype))
    out(malloc_line)
    out(
        f"timing: denoising loop only, time.perf_counter; GC disabled inside the loop; attach/detach not timed; "
        f"{args.warmup} untimed warm-up run(s) per arm, then {args.repeats} timed runs per arm interleaved ABBA"
    )
    out("")

    model = build_model(args.dtype, seed=args.seed)
    sampler = Sampler(model, build_scheduler(), batch=args.batch, dtype=args.dtype, seed=args.seed)
    sampler.check_timesteps(args.steps)
    for _ in range(args.warmup):
        for arm in ARMS:
            run_arm(sampler, arm, args.steps)

    runs = {arm: [] for arm in ARMS}
    for r in range(args.repeats):
        order = ARMS if r % 2 == 0 else ARMS[::-1]
        for arm in order:
            res = run_arm(sampler, arm, args.steps)
            runs[arm].append(res)
            out(
                f"  repeat {r:2d}: {arm:8s} {res['seconds']:7.3f} s  (cpu {res['cpu_seconds']:7.3f} s, "
                f"median call {median(res['call_seconds']):.4f} s)"
            )
    out("")

    wall = {arm: [x["seconds"] for x in runs[arm]] for arm in ARMS}
    cpu = {arm: [x["cpu_seconds"] for x in runs[arm]] for arm in ARMS}
    calls = {arm: [c for x in runs[arm] for c in x["call_seconds"]] for arm in ARMS}
    ratio = median(wall["attached"]) / median(wall["plain"])
    pair = median([a / p for a, p in zip(wall["attached"], wall["plain"])])
    best = min(wall["attached"]) / min(wall["plain"])
    ratio_cpu = median(cpu["attached"]) / median(cpu["plain"])
    ratio_call = median(calls["attached"]) / median(calls["plain"])
    out(f"plain    denoising loop: {spread(wall['plain'])}")
    out(f"attached denoising loop: {spread(wall['attached'])}")
    out(
        f"per transformer call: plain median {median(calls['plain']):.4f} s, attached median "
        f"{median(calls['attached']):.4f} s (n={len(calls['plain'])} calls each)"
    )
    out("")
    out(
        f"RATIO attached / plain (median loop time): {ratio:.4f}   goal <= {GOAL}  "
        f"[{'MET' if ratio <= GOAL else 'NOT MET'}]"
    )
    out(
        f"  same ratio from: median of per-pair ratios {pair:.4f}, best-of-runs {best:.4f}, "
        f"median per-call time {ratio_call:.4f}, process CPU time {ratio_cpu:.4f}"
    )
    noise = max((max(w) - min(w)) / median(w) for w in wall.values())
    if noise > 2 * (GOAL - 1):
        out(
            f"  NOTE: run-to-run spread is {100 * noise:.0f}% (max−min over median), larger than the "
            f"{100 * (GOAL - 1):.0f}% being measured: the run-level ratio is not resolved on this machine now; "
            f"see phase 2 (call-by-call interleaving) below"
        )
    lp = runs["plain"][-1]["latents"].float()
    la = runs["attached"][-1]["latents"].float()
    out(
        f"sanity: attached full reproduces the plain model: max |Δ latents| = {(la - lp).abs().max().item():.3g} "
        f"(relative L2 {((la - lp).norm() / lp.norm()).item():.3g}); finite: {bool(torch.isfinite(la).all())}"
    )
    rep = runs["attached"][-1]["report"]
    out(
        f"report(): M_lin per image (CFG counted) {rep['macs_cfg_counted'] / 1e9:.2f} G over {rep['num_steps']} "
        f"steps, full_steps {len(rep['full_steps'])}/{rep['num_steps']}"
    )
    pairs = call_interleaved(out, model, sampler, args) if args.call_pairs > 0 else None
    work = extra_work(out, sampler, args)
    out.save(
        {
            "args": vars(args),
            "model": DIT_S,
            "wall_seconds": wall,
            "call_interleaved": pairs,
            "extra_work": work,
            "cpu_seconds": cpu,
            "call_seconds": {arm: [x["call_seconds"] for x in runs[arm]] for arm in ARMS},
            "sched_seconds": {arm: [x["sched_seconds"] for x in runs[arm]] for arm in ARMS},
            "ratio": ratio,
            "ratio_pairwise": pair,
            "ratio_best": best,
            "ratio_per_call": ratio_call,
            "ratio_cpu": ratio_cpu,
            "goal": GOAL,
            "macs_cfg_counted": rep["macs_cfg_counted"],
        }
    )


def extra_work(out, sampler: Sampler, args) -> dict:
    """Phase 3 — timing-free view of the overhead: which tensor ops the attached call runs in addition
    (torch.profiler op counts, deterministic) and the Python time of the executor's bookkeeping
    (cProfile own time of harness/engine.py, harness/accounting.py, harness/scores.py, methods/)."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = 2
    counts, self_ms = {}, {}
    for arm in ARMS:
        if arm == "plain":
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                sampler.run(steps)
        else:
            with attached(sampler, "full"):
                with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                    sampler.run(steps)
        ev = prof.key_averages()
        counts[arm] = {e.key: e.count / steps for e in ev}
        self_ms[arm] = {e.key: e.self_cpu_time_total / 1e3 / steps for e in ev}
    extra = sorted(
        (
            (counts["attached"].get(k, 0) - counts["plain"].get(k, 0), k)
            for k in set(counts["plain"]) | set(counts["attached"])
        ),
        reverse=True,
    )
    extra = [(d, k) for d, k in extra if d != 0]
    with attached(sampler, "full"):
        pr = cProfile.Profile()
        pr.enable()
        seconds, _ = sampler.run(steps)
        pr.disable()
    st = pstats.Stats(pr).stats
    bookkeeping = {}
    for (filename, line, func), (_cc, _nc, tottime, _ct, _callers) in st.items():
        f = filename.replace("\\", "/")
        if any(
            part in f for part in ("/harness/engine.py", "/harness/accounting.py", "/harness/scores.py", "/methods/")
        ):
            bookkeeping[f"{Path(f).name}:{line}({func})"] = tottime / steps
    total = sum(bookkeeping.values())
    out("")
    out(
        "Phase 3 — extra work of an attached call (timing-free): tensor ops per transformer call that differ "
        "(attached − plain calls, torch.profiler counts):"
    )
    out("  " + (", ".join(f"{k} {d:+.0f}" for d, k in extra[:14]) or "none"))
    out(
        f"  executor bookkeeping in Python (cProfile own time of harness/engine.py, accounting.py, scores.py, "
        f"methods/): {1e3 * total:.2f} ms per call (under cProfile), "
        f"{100 * total / (seconds / steps):.2f}% of a profiled attached call"
    )
    for name, sec in sorted(bookkeeping.items(), key=lambda kv: -kv[1])[:6]:
        out(f"    {1e3 * sec:7.3f} ms  {name}")
    return {"extra_op_calls_per_call": extra, "bookkeeping_s_per_call": total, "bookkeeping": bookkeeping}


def call_interleaved(out, model, sampler: Sampler, args) -> dict:
    """Phase 2: two model copies with the same weights, one with ``full`` attached; every denoising
    step calls both on the same input, alternating which goes first, so both arms see the same
    machine conditions within a second. The plain copy's output drives the sampler."""
    import copy

    from _common import autocast_ctx

    from dsbench import methods

    twin = copy.deepcopy(model)
    steps = max(args.steps, 2)
    sched = build_scheduler()
    times = {arm: [] for arm in ARMS}
    diffs = []
    with dsbench.attach(twin, methods.build("full"), num_steps=steps) as h, torch.no_grad(), autocast_ctx(args.dtype):
        x = torch.cat([sampler.latents0, sampler.latents0])
        done = 0
        while done < args.call_pairs + 2:  # the first 2 pairs are warm-up
            sched.set_timesteps(steps)
            h.new_run(steps)
            x = torch.cat([sampler.latents0, sampler.latents0])
            for t in sched.timesteps:
                ts = t[None].expand(x.shape[0])
                res = {}
                order = ARMS if done % 2 == 0 else ARMS[::-1]
                for arm in order:
                    net = model if arm == "plain" else twin
                    t0 = time.perf_counter()
                    res[arm] = net(x, timestep=ts, class_labels=sampler.class_labels).sample
                    dt = time.perf_counter() - t0
                    if done >= 2:
                        times[arm].append(dt)
                diffs.append((res["attached"].float() - res["plain"].float()).abs().max().item())
                eps = res["plain"][:, : sampler.latent_channels]
                x = sched.step(eps, t, x).prev_sample
                done += 1
                if done >= args.call_pairs + 2:
                    break
    ratios = [a / p for a, p in zip(times["attached"], times["plain"])]
    ratio = median(ratios)
    out("")
    out(
        f"Phase 2 — call-by-call interleaving: {len(ratios)} pairs of transformer calls (2 warm-up pairs "
        f"dropped), two copies with identical weights, order alternated"
    )
    out(f"  per call: plain median {median(times['plain']):.4f} s, attached median {median(times['attached']):.4f} s")
    out(
        f"  RATIO attached / plain (median of per-pair ratios): {ratio:.4f}   goal <= {GOAL}  "
        f"[{'MET' if ratio <= GOAL else 'NOT MET'}]; "
        f"ratio of medians {median(times['attached']) / median(times['plain']):.4f}"
    )
    q = sorted(ratios)
    out(
        f"  per-pair ratio quartiles: {q[len(q) // 4]:.4f} / {q[len(q) // 2]:.4f} / {q[(3 * len(q)) // 4]:.4f}; "
        f"max |attached − plain| output {max(diffs):.3g}"
    )
    return {"times": times, "ratios": ratios, "ratio": ratio}


if __name__ == "__main__":
    main()
