"""ToCa: measured latency speedup / MAC speedup on a DiT-S-sized model.

See docs/methods/toca.md and docs/evaluation.md#latency.

Both arms go through the same executor: ``full`` attached vs ``toca`` attached (DiT defaults,
``methods.build("toca")``), same model instance and weights, same dtype, batched CFG.
Timed: the denoising loop only (set_timesteps, transformer calls, CFG combination, scheduler
steps; the engine's scoring / sorting / gather / scatter happen inside the transformer calls).
Runs are interleaved ABBA (full, toca, toca, full, ...) after untimed warm-up runs of each
arm; the headline uses medians.

    python benchmarks/toca_speed.py                   # defaults, writes results/benchmarks/toca_speed.*
    python benchmarks/toca_speed.py --steps 50 --repeats 3 --out toca_speed_50steps
    python benchmarks/toca_speed.py --profile         # where the ToCa time goes (no timed repeats)

Not a test: nothing is asserted about wall-clock time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
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
    usage,
)

GOAL = 0.85
ARMS = ("full", "toca")


def step_kinds(report) -> list[str]:
    """F: every layer FULL; f: some layers FULL (layer-0-only full step); p: TOPK layers; R: all REUSE."""
    kinds = []
    for decisions in report["decisions"]:
        s = set(decisions)
        if s == {"FULL"}:
            kinds.append("F")
        elif "FULL" in s:
            kinds.append("f")
        elif any(d.startswith("TOPK") for d in s):
            kinds.append("p")
        else:
            kinds.append("R")
    return kinds


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per arm (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per arm before timing")
    p.add_argument(
        "--steps",
        type=int,
        default=20,
        help="DDIM steps (protocol: 50; default 20 so the default run fits in ~6 min here)",
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
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the timed repeats: profile one run of each arm (torch.profiler ops, "
        "cProfile of the Python side) and print where the ToCa time goes",
    )
    p.add_argument("--top", type=int, default=25, help="rows of each profile table")
    p.add_argument(
        "--out",
        default=None,
        help="basename under results/benchmarks/ (default toca_speed, or toca_speed_profile with --profile)",
    )
    return p.parse_args()


def run_arm(sampler: Sampler, arm: str, steps: int) -> dict:
    with attached(sampler, arm) as h:
        with usage() as use:
            seconds, latents = sampler.run(steps)
        report = h.report()
    return {
        "seconds": seconds,
        **use,
        "call_seconds": list(sampler.call_seconds),
        "sched_seconds": sampler.sched_seconds,
        "report": report,
        "latents": latents,
    }


def main():
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    name = args.out or ("toca_speed_profile" if args.profile else "toca_speed")
    malloc_line = tune_malloc() if args.mallopt else "malloc: glibc defaults (see --mallopt)"
    out = Report(name)
    out("=" * 100)
    out("ToCa latency speedup / MAC speedup — DiT-S-sized DiTTransformer2DModel, random weights")
    out("=" * 100)
    for line in machine_lines(args):
        out(line)
    out(f"model: {DIT_S}  (12 blocks, hidden 384, 256 tokens)")
    out(
        f"batch: {args.batch} images + CFG batched = {2 * args.batch} rows per call; DDIMScheduler "
        f"timestep_spacing='linspace', {args.steps} steps"
        + (
            ""
            if args.steps == 50
            else f"  [NOT the protocol's 50 steps: reduced to {args.steps} so the default run fits the time budget; "
            f"use --steps 50]"
        )
    )
    out(dtype_line(args.dtype))
    out(malloc_line)
    out(
        "attention: full arm uses fused SDPA (no statistics needed); toca materialises the attention "
        "probabilities on its FULL steps (s1 needs them, see docs/methods/toca.md) — timed that way"
    )
    out(
        f"timing: denoising loop only, time.perf_counter (CPU, no sync needed); GC disabled inside the loop; "
        f"{args.warmup} untimed warm-up run(s) per arm, then {args.repeats} timed runs per arm interleaved ABBA"
    )
    out("")

    model = build_model(args.dtype, seed=args.seed)
    sampler = Sampler(model, build_scheduler(), batch=args.batch, dtype=args.dtype, seed=args.seed)
    sampler.check_timesteps(args.steps)
    for _ in range(args.warmup):
        for arm in ARMS:
            run_arm(sampler, arm, args.steps)

    if args.profile:
        whatif = profile(out, sampler, args)
        out.save({"args": vars(args), "profile": True, "whatif": whatif})
        return

    runs = {arm: [] for arm in ARMS}
    for r in range(args.repeats):
        order = ARMS if r % 2 == 0 else ARMS[::-1]
        for arm in order:
            res = run_arm(sampler, arm, args.steps)
            runs[arm].append(res)
            out(
                f"  repeat {r}: {arm:4s} {res['seconds']:7.3f} s  (cpu {res['cpu_seconds']:7.3f} s, of it system "
                f"{res['sys_seconds']:6.3f} s; {res['minor_faults']:8d} minor page faults; "
                f"selection {res['report']['selection_seconds']:.3f} s)"
            )
    out("")

    rep = {arm: runs[arm][-1]["report"] for arm in ARMS}
    macs = {arm: rep[arm]["macs_cfg_counted"] for arm in ARMS}
    macs_att = {arm: rep[arm]["macs_cfg_counted"] + rep[arm]["macs_attention_cfg_counted"] for arm in ARMS}
    mac_speedup = macs["full"] / macs["toca"]
    wall = {arm: [x["seconds"] for x in runs[arm]] for arm in ARMS}
    cpu = {arm: [x["cpu_seconds"] for x in runs[arm]] for arm in ARMS}
    lat_speedup = median(wall["full"]) / median(wall["toca"])
    ratio = lat_speedup / mac_speedup
    pair = median([f / t for f, t in zip(wall["full"], wall["toca"])])
    best = min(wall["full"]) / min(wall["toca"])
    cpu_speedup = median(cpu["full"]) / median(cpu["toca"])
    sel = [x["report"]["selection_seconds"] for x in runs["toca"]]
    kinds = step_kinds(rep["toca"])

    sys_s = {arm: [x["sys_seconds"] for x in runs[arm]] for arm in ARMS}
    faults = {arm: [x["minor_faults"] for x in runs[arm]] for arm in ARMS}
    out(f"full  denoising loop: {spread(wall['full'])}")
    out(f"toca  denoising loop: {spread(wall['toca'])}")
    out(f"ToCa config (resolved): {rep['toca']['config']}")
    out(
        f"ToCa step types: {''.join(kinds)}  (F full, f layer-0-only full, p partial/TOPK, R all-REUSE); "
        f"full steps {rep['toca']['full_steps']}"
    )
    out("")
    out(f"M_lin per image (CFG counted): full {macs['full'] / 1e9:.2f} G, toca {macs['toca'] / 1e9:.2f} G")
    out(f"MAC speedup (M_lin, full / toca):             {mac_speedup:.3f}x")
    out(f"  (M_lin + M_attn: {macs_att['full'] / macs_att['toca']:.3f}x)")
    out(f"latency speedup (median full / median toca):  {lat_speedup:.3f}x")
    out(
        f"RATIO latency speedup / MAC speedup:          {ratio:.3f}   goal >= {GOAL}  "
        f"[{'MET' if ratio >= GOAL else 'NOT MET'}]   (published ToCa: 0.87 on PixArt; a user measured 0.4 on DiT)"
    )
    out(
        f"  same ratio from: median of per-pair speedups {pair / mac_speedup:.3f}, best-of-runs "
        f"{best / mac_speedup:.3f}, process CPU time {cpu_speedup / mac_speedup:.3f}"
    )
    noise = max((max(w) - min(w)) / median(w) for w in wall.values())
    out(
        f"  run-to-run spread (max−min over median, worst arm): {100 * noise:.0f}%"
        + ("  [machine shared with other processes: the ratio is uncertain by about this much]" if noise > 0.1 else "")
    )
    out(
        f"selection overhead (report()['selection_seconds'], scoring + sort per run): {spread(sel)} "
        f"= {100 * median(sel) / median(wall['toca']):.1f}% of the ToCa loop"
    )
    sched = {arm: median([x["sched_seconds"] for x in runs[arm]]) for arm in ARMS}
    out(
        f"system (kernel) time per run: full {median(sys_s['full']):.3f} s, toca {median(sys_s['toca']):.3f} s; "
        f"minor page faults per run: full {median(faults['full']):.0f}, toca {median(faults['toca']):.0f}"
        + (
            "  [large temporaries re-faulted on every allocation: glibc mmaps/unmaps big blocks; try --mallopt]"
            if median(faults["toca"]) > 2 * median(faults["full"]) + 1000
            else ""
        )
    )
    out(
        f"scheduler + CFG combination per run (outside the transformer): full {sched['full']:.3f} s, "
        f"toca {sched['toca']:.3f} s"
    )
    lat_f = runs["full"][-1]["latents"].float()
    lat_t = runs["toca"][-1]["latents"].float()
    rel = ((lat_t - lat_f).norm() / lat_f.norm()).item()
    out(
        f"sanity: final latents finite: full {bool(torch.isfinite(lat_f).all())}, toca "
        f"{bool(torch.isfinite(lat_t).all())}; relative L2 difference toca vs full {rel:.3g} (random weights)"
    )
    out("")

    breakdown = per_step_breakdown(out, runs, kinds, rep)
    out.save(
        {
            "args": vars(args),
            "model": DIT_S,
            "steps": args.steps,
            "kinds": kinds,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "sys_seconds": sys_s,
            "minor_faults": faults,
            "selection_seconds": sel,
            "mallopt": args.mallopt,
            "call_seconds": {arm: [x["call_seconds"] for x in runs[arm]] for arm in ARMS},
            "sched_seconds": {arm: [x["sched_seconds"] for x in runs[arm]] for arm in ARMS},
            "macs_cfg_counted": macs,
            "macs_with_attention_cfg_counted": macs_att,
            "macs_per_step": {arm: rep[arm]["macs_per_step"] for arm in ARMS},
            "full_steps": rep["toca"]["full_steps"],
            "config": rep["toca"]["config"],
            "mac_speedup": mac_speedup,
            "latency_speedup": lat_speedup,
            "ratio": ratio,
            "goal": GOAL,
            "ratio_pairwise": pair / mac_speedup,
            "ratio_best": best / mac_speedup,
            "ratio_cpu": cpu_speedup / mac_speedup,
            "breakdown": breakdown,
        }
    )


def per_step_breakdown(out, runs, kinds, rep) -> dict:
    """Median call time per step, grouped by ToCa step type, against a MAC-proportional ideal.

    ideal_i = t_full(i) × M_lin,toca(i) / M_lin,full(i): what the ToCa call would take if time
    followed M_lin. excess = measured − ideal is the time the latency speedup loses there.
    """
    T = len(kinds)
    med = {arm: [median([x["call_seconds"][i] for x in runs[arm]]) for i in range(T)] for arm in ARMS}
    mps = {arm: rep[arm]["macs_per_step"] for arm in ARMS}
    rows = {}
    for i, k in enumerate(kinds):
        row = rows.setdefault(k, {"steps": 0, "full_s": 0.0, "toca_s": 0.0, "ideal_s": 0.0, "mac_frac": 0.0})
        ideal = med["full"][i] * mps["toca"][i] / mps["full"][i]
        row["steps"] += 1
        row["full_s"] += med["full"][i]
        row["toca_s"] += med["toca"][i]
        row["ideal_s"] += ideal
        row["mac_frac"] += mps["toca"][i] / mps["full"][i]
    out("Per-step breakdown (median transformer-call seconds summed over the steps of each type):")
    out(
        f"  {'type':4s} {'steps':>5s} {'full arm':>9s} {'toca':>9s} {'toca/full':>9s} {'MAC frac':>9s} "
        f"{'ideal':>8s} {'excess':>8s}"
    )
    tot = {"full_s": 0.0, "toca_s": 0.0, "ideal_s": 0.0}
    for k in ("F", "f", "p", "R"):
        if k not in rows:
            continue
        r = rows[k]
        for key in tot:
            tot[key] += r[key]
        out(
            f"  {k:4s} {r['steps']:5d} {r['full_s']:9.3f} {r['toca_s']:9.3f} {r['toca_s'] / r['full_s']:9.3f} "
            f"{r['mac_frac'] / r['steps']:9.3f} {r['ideal_s']:8.3f} {r['toca_s'] - r['ideal_s']:+8.3f}"
        )
    out(
        f"  {'all':4s} {T:5d} {tot['full_s']:9.3f} {tot['toca_s']:9.3f} {tot['toca_s'] / tot['full_s']:9.3f} "
        f"{'':9s} {tot['ideal_s']:8.3f} {tot['toca_s'] - tot['ideal_s']:+8.3f}"
    )
    out(
        "  (MAC frac: mean M_lin,toca/M_lin,full of those steps; ideal: MAC-proportional toca time; "
        "excess > 0 is lost speedup)"
    )
    out(
        "  per step, toca/full call time: "
        + " ".join(f"{k}{med['toca'][i] / med['full'][i]:.2f}" for i, k in enumerate(kinds))
    )
    # what-if: ToCa's FULL steps cost what the full arm's do (no attention-statistics tax)
    tax = sum(med["toca"][i] - med["full"][i] for i, k in enumerate(kinds) if k == "F")
    mac_speedup = sum(mps["full"]) / sum(mps["toca"])
    lat = tot["full_s"] / tot["toca_s"]
    lat_notax = tot["full_s"] / (tot["toca_s"] - tax)
    out(
        f"  FULL steps cost {tax:+.3f} s more under toca than under full (explicit attention + statistics). "
        f"Without that: transformer-call speedup {lat:.3f} -> {lat_notax:.3f}, ratio {lat / mac_speedup:.3f} -> "
        f"{lat_notax / mac_speedup:.3f}"
    )
    return {
        "per_kind": rows,
        "median_call_seconds": med,
        "full_step_tax_s": tax,
        "ratio_calls": lat / mac_speedup,
        "ratio_calls_without_full_step_tax": lat_notax / mac_speedup,
    }


# -- --profile --------------------------------------------------------------------------------------
def profile(out, sampler: Sampler, args) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = args.steps
    out("PROFILE (one run per arm after warm-up; profiler overhead inflates absolute times)")
    out("")
    tables = {}
    for arm in ARMS:
        with attached(sampler, arm) as h:
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                seconds, _ = sampler.run(steps)
            rep = h.report()
        tables[arm] = prof.key_averages()
        out(
            f"--- torch.profiler, {arm}: loop {seconds:.2f} s, selection {rep['selection_seconds']:.3f} s; "
            f"top {args.top} ops by self CPU time ---"
        )
        out(tables[arm].table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48))
    # op-level difference toca − full (self CPU): which kernels ToCa adds
    full = {e.key: e for e in tables["full"]}
    toca = {e.key: e for e in tables["toca"]}
    diff = []
    for key in set(full) | set(toca):
        ft = full[key].self_cpu_time_total if key in full else 0.0
        tt = toca[key].self_cpu_time_total if key in toca else 0.0
        fc = full[key].count if key in full else 0
        tc = toca[key].count if key in toca else 0
        diff.append((tt - ft, key, ft, tt, fc, tc))
    diff.sort(reverse=True)
    out(f"--- ops ToCa spends MORE self CPU on than full (ms), top {args.top} ---")
    out(f"  {'op':48s} {'full ms':>9s} {'toca ms':>9s} {'delta':>9s} {'calls f/t':>13s}")
    for d, key, ft, tt, fc, tc in diff[: args.top]:
        out(f"  {key[:48]:48s} {ft / 1e3:9.1f} {tt / 1e3:9.1f} {d / 1e3:+9.1f} {fc:>6d}/{tc:<6d}")
    out("")

    # Python side: cProfile of one ToCa run
    with attached(sampler, "toca") as h:
        pr = cProfile.Profile()
        pr.enable()
        seconds, _ = sampler.run(steps)
        pr.disable()
        rep = h.report()
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        s = io.StringIO()
        stats = pstats.Stats(pr, stream=s).strip_dirs().sort_stats(key)
        stats.print_stats(args.top)
        out(f"--- cProfile, toca (loop {seconds:.2f} s under cProfile), top {args.top} by {title} ---")
        text = s.getvalue()
        out(text[text.find("ncalls") :].rstrip() if "ncalls" in text else text.rstrip())
        out("")
    s = io.StringIO()
    stats = pstats.Stats(pr, stream=s).sort_stats("cumulative")
    stats.print_stats(r"harness|methods", args.top)
    text = s.getvalue()
    out("--- cProfile, toca: harness/ and methods/ functions by cumulative time ---")
    out(text[text.find("ncalls") :].rstrip() if "ncalls" in text else text.rstrip())
    out("")
    return attention_microbench(out, sampler, args)


def block_inputs(sampler: Sampler, args) -> dict:
    """The real inputs of transformer block 0 (and the sa / mlp outputs) in one plain call."""
    from _common import autocast_ctx

    model = sampler.transformer
    block = model.transformer_blocks[0]
    seen = {}

    def pre(_mod, a, kw):
        seen.setdefault("x", kw.get("hidden_states", a[0] if a else None))
        seen.setdefault("timestep", kw.get("timestep"))
        seen.setdefault("class_labels", kw.get("class_labels"))

    def grab(name):
        def hook(_mod, _a, out):
            seen.setdefault(name, out)

        return hook

    hs = [
        block.register_forward_pre_hook(pre, with_kwargs=True),
        block.attn1.register_forward_hook(grab("sa_out")),
        block.ff.register_forward_hook(grab("mlp_out")),
    ]
    try:
        rows = 2 * args.batch
        x = sampler.latents0.repeat(2, 1, 1, 1)
        with torch.no_grad(), autocast_ctx(args.dtype):
            model(x, timestep=torch.full((rows,), 500), class_labels=sampler.class_labels)
    finally:
        for h in hs:
            h.remove()
    return seen


def compare(fns: dict, reps: int = 15) -> dict:
    """Median seconds per function, calls interleaved round-robin (robust to a drifting machine load)."""
    for fn in fns.values():
        fn()
        fn()
    samples = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - t0)
    return {key: median(v) for key, v in samples.items()}


def faults_of(fn, reps=5) -> tuple[float, float]:
    """(minor page faults, system ms) per call of fn, after warm-up."""
    import resource

    for _ in range(2):
        fn()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(reps):
        fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (r1.ru_minflt - r0.ru_minflt) / reps, 1e3 * (r1.ru_stime - r0.ru_stime) / reps


def schedule_counts(report) -> dict:
    """Block-steps of each kind in the ToCa schedule (DiT: layer 2b = sa, 2b+1 = mlp of block b)."""
    dec = report["decisions"]
    T, L = len(dec), len(dec[0])
    nb = L // 2
    c = {"sa_full_stats_used": 0, "sa_full_stats_unused": 0, "sa_reuse": 0, "mlp_reuse": 0, "mlp_topk": 0, "topk_k": []}
    for b in range(nb):
        sa, mlp = 2 * b, 2 * b + 1
        for i in range(T):
            if dec[i][sa] == "FULL":
                used = False
                for j in range(i + 1, T):
                    if dec[j][sa] == "FULL":
                        break
                    if dec[j][mlp].startswith("TOPK"):
                        used = True
                        break
                c["sa_full_stats_used" if used else "sa_full_stats_unused"] += 1
            elif dec[i][sa] == "REUSE":
                c["sa_reuse"] += 1
            if dec[i][mlp] == "REUSE":
                c["mlp_reuse"] += 1
            elif dec[i][mlp].startswith("TOPK"):
                c["mlp_topk"] += 1
                c["topk_k"].append(int(dec[i][mlp][5:-1]))
    return c


def attention_microbench(out, sampler: Sampler, args) -> dict:
    """Per-block costs of what ToCa runs, and of leaner what-if variants (NOT the harness code).

    Uses only stable entry points (dsbench.adapters.attention.attention, the block's modules);
    the what-if variants produce the output and the statistic ToCa-DiT actually reads (column sums
    of the head-mean self-attention map). Projects each change's saving per run from the
    block-step counts of the schedule.
    """
    from _common import autocast_ctx

    from dsbench.accounting import MacCounter
    from dsbench.adapters.attention import attention, split_heads
    from dsbench.scores import SELF_ATTN

    model = sampler.transformer
    block = model.transformer_blocks[0]
    attn = block.attn1
    seen = block_inputs(sampler, args)
    x, timestep, labels = seen["x"], seen["timestep"], seen["class_labels"]
    rows, n, c = x.shape
    H = attn.heads
    counter = MacCounter(torch.nn.Identity())
    with attached(sampler, "toca") as h:
        sampler.run(args.steps)
        rep = h.report()
    cnt = schedule_counts(rep)
    k = int(round(median(cnt["topk_k"]))) if cnt["topk_k"] else 16
    g = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(rows)])
    idx3 = index.unsqueeze(-1).expand(-1, -1, c)
    t = {}
    with torch.no_grad(), autocast_ctx(args.dtype):
        norm1 = block.norm1
        emb_fn = lambda: norm1.linear(norm1.silu(norm1.emb(timestep, labels, hidden_dtype=x.dtype)))
        emb = emb_fn()
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb[:, None].chunk(6, dim=2)
        norm_h = norm1.norm(x) * (1 + scale_msa) + shift_msa
        cache_sa, cache_mlp = seen["sa_out"].clone(), seen["mlp_out"].clone()
        q, kk, v = (
            split_heads(attn.to_q(norm_h), H),
            split_heads(attn.to_k(norm_h), H),
            split_heads(attn.to_v(norm_h), H),
        )
        # -- FULL steps: the self-attention kernel
        scale = q.shape[-1] ** -0.5
        sdpa = lambda: attention(q, kk, v, counter=counter)
        probs = lambda: attention(q, kk, v, counter=counter, want=frozenset({SELF_ATTN}))

        def lean_probs_bf16():  # scale on q, softmax in the compute dtype, keep only the column sums (B×N)
            p = torch.matmul(q * scale, kk.transpose(-1, -2)).softmax(dim=-1)
            return torch.matmul(p, v), p.sum(dim=2).float().mean(dim=1)

        def lean_probs_chunked(chunk=4):  # fp32 softmax as now, in chunks of rows: small temporaries
            outs, cols = [], []
            for r0 in range(0, rows, chunk):
                qs, ks, vs = q[r0 : r0 + chunk], kk[r0 : r0 + chunk], v[r0 : r0 + chunk]
                p = torch.matmul(qs * scale, ks.transpose(-1, -2)).softmax(dim=-1, dtype=torch.float32)
                outs.append(torch.matmul(p.to(vs.dtype), vs))
                cols.append(p.sum(dim=2).mean(dim=1))
            return torch.cat(outs), torch.cat(cols)

        fns = {
            "sdpa": sdpa,
            "probs": probs,
            "lean_probs_bf16": lean_probs_bf16,
            "lean_probs_chunked": lean_probs_chunked,
        }
        t.update(compare(fns))
        pf = {key: faults_of(fn) for key, fn in fns.items()}
        stat = probs()[1][SELF_ATTN]
        # -- selection: s1 as dsbench.scores.attention_received computes it, vs from stored column sums
        l2 = lambda r: r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        colsum = stat.float().sum(dim=1)
        # -- blocks whose layers are REUSE / TOPK: the pieces they still run
        xr = torch.gather(x, 1, idx3)
        hr = block.norm3(xr) * (1 + scale_mlp) + shift_mlp
        out_rows = block.ff(hr)
        group2 = {
            "s1_from_map": lambda: l2(stat.float().sum(dim=1)),
            "s1_from_colsum": lambda: l2(colsum),
            "adaLN_emb": emb_fn,
            "residual": lambda: gate_msa * cache_sa + x,
            "residual_addcmul": lambda: torch.addcmul(x, gate_msa, cache_sa),
            "gather_norm_rows": lambda: block.norm3(torch.gather(x, 1, idx3)) * (1 + scale_mlp) + shift_mlp,
            "ff_rows": lambda: block.ff(hr),
            "scatter_rows": lambda: cache_mlp.scatter_(1, idx3, out_rows.to(cache_mlp.dtype)),
            "ff_all": lambda: block.ff(norm_h),
        }
        t.update(compare(group2))
        pf2 = {key: faults_of(fn)[0] for key, fn in group2.items()}

    ms = {key: 1e3 * val for key, val in t.items()}
    out(
        f"--- micro-benchmark, one block with block 0's real inputs (x {tuple(x.shape)} {x.dtype}, cached "
        f"outputs {cache_sa.dtype}), {args.dtype}, median ms ---"
    )
    out(
        f"  FULL-step self-attention: fused SDPA (full arm) {ms['sdpa']:.2f} | harness attention() with "
        f"SELF_ATTN (toca) {ms['probs']:.2f} | what-if, keeping only column sums: softmax in bf16 "
        f"{ms['lean_probs_bf16']:.2f}, fp32 softmax in chunks of 4 rows {ms['lean_probs_chunked']:.2f}"
    )
    out(
        "  minor page faults / system ms per call: "
        + ", ".join(f"{key} {f:.0f} / {sm:.2f}" for key, (f, sm) in pf.items())
    )
    out(
        f"  stored SELF_ATTN statistic: {tuple(stat.shape)} {stat.dtype} "
        f"({stat.numel() * stat.element_size() / 2**20:.1f} MiB per block); ToCa-DiT reads only its column sums"
    )
    out(
        f"  s1 per TOPK layer (dsbench.scores.attention_received): from the stored map {ms['s1_from_map']:.3f} | "
        f"from stored column sums {ms['s1_from_colsum']:.3f}"
    )
    out(
        f"  adaLN emb MLP + linear (per block, every step, both arms) {ms['adaLN_emb']:.2f}; residual update "
        f"gate*F + x {ms['residual']:.2f} | torch.addcmul {ms['residual_addcmul']:.2f}"
    )
    out(
        f"  mlp TOPK(k={k}): gather+norm3+modulate rows {ms['gather_norm_rows']:.2f}, ff on rows "
        f"{ms['ff_rows']:.2f}, scatter into cache {ms['scatter_rows']:.2f}  (ff on all {n} tokens "
        f"{ms['ff_all']:.2f}; MAC fraction {k / n:.3f}, time fraction {t['ff_rows'] / t['ff_all']:.3f})"
    )
    out(
        "  minor page faults per call of the pieces above: "
        + ", ".join(f"{key} {f:.0f}" for key, f in pf2.items())
        + "  (a piece that faults is timed with glibc's mmap/trim churn included)"
    )
    out("")
    n_blocks = len(model.transformer_blocks)
    savings = {
        "attention stats: bf16 softmax, keep column sums only (FULL sa whose stats are read later)": cnt[
            "sa_full_stats_used"
        ]
        * (t["probs"] - t["lean_probs_bf16"]),
        "attention stats skipped when no TOPK reads them before the next FULL (fused SDPA instead)": cnt[
            "sa_full_stats_unused"
        ]
        * (t["probs"] - t["sdpa"]),
        "s1 from column sums stored at FULL steps, not re-reduced per TOPK layer": cnt["mlp_topk"]
        * (t["s1_from_map"] - t["s1_from_colsum"]),
    }
    out(
        f"--- projected savings per ToCa run ({args.steps} steps, {n_blocks} blocks; block-steps: sa FULL with "
        f"stats read later {cnt['sa_full_stats_used']}, never read {cnt['sa_full_stats_unused']}; sa REUSE "
        f"{cnt['sa_reuse']}; mlp REUSE {cnt['mlp_reuse']}; mlp TOPK {cnt['mlp_topk']}, median k {k}) ---"
    )
    total = 0.0
    for name, sec in savings.items():
        total += sec
        out(f"  {sec:7.3f} s  {name}")
    out(f"  {total:7.3f} s  total")
    rf, rt = run_arm(sampler, "full", args.steps), run_arm(sampler, "toca", args.steps)
    tf, tt = rf["seconds"], rt["seconds"]
    mac_speedup = rf["report"]["macs_cfg_counted"] / rt["report"]["macs_cfg_counted"]
    out(
        f"  one un-profiled run of each arm for scale: full {tf:.2f} s, toca {tt:.2f} s -> latency speedup "
        f"{tf / tt:.3f}, ratio {tf / tt / mac_speedup:.3f} (MAC speedup {mac_speedup:.3f})"
    )
    out(
        f"  toca minus the projected savings: {tt - total:.2f} s -> latency speedup {tf / (tt - total):.3f}, "
        f"ratio {tf / (tt - total) / mac_speedup:.3f}"
    )
    return {
        "ms": ms,
        "faults_sys_ms": pf,
        "faults_pieces": pf2,
        "counts": cnt,
        "savings_s": savings,
        "full_s": tf,
        "toca_s": tt,
        "mac_speedup": mac_speedup,
    }


if __name__ == "__main__":
    main()
