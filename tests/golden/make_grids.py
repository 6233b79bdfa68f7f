"""Record the reference codes' per-(step, block) decisions as golden grids (tests/golden/README.md).

Run outside the test suite, with checkouts of the authors' repositories (nothing of theirs is copied here:
their scheduling modules are imported from the given paths and driven model-free, in the order their DiT
forward calls them, with stub tensors where they read shapes):

    python tests/golden/make_grids.py --toca PATH/ToCa --duca PATH/DuCa --taylorseer PATH/TaylorSeer

Cell codes (ToCa, FORA, DuCa; one row of 28 blocks per step, steps in our order i = 0 … T−1):
-1 full block, -2 skipped block (DuCa "aggressive": the last block returns the previous step's output),
k >= 0 partial block (attention reused, k fresh MLP tokens of 256); ToCa PixArt: [k cross-attention, k MLP]
for a partial block (self-attention reused); ToCa FLUX: one entry per step, 1 full / 0 partial. TaylorSeer
(one entry per step, its type is decided once per step; DiT and FLUX code): [1 = full / 0 = Taylor, factors
kept or used, forecast of a test signal].
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import sys
import types
from pathlib import Path

import torch

BLOCKS, TOKENS = 28, 256  # DiT-XL/2 at 256 px


def load(name: str, folder: Path, modules: list[str]) -> types.SimpleNamespace:
    """Import the named modules of a reference ``cache_functions``-style folder without its ``__init__``
    (which imports their attention module and timm)."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    return types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}") for m in modules})


def token_grid(ref, T: int, N: int, R: float, schedule: str, aggressive: bool) -> list[list[int]]:
    """ToCa/DuCa DiT: ``cal_type`` in every block, ``force_init`` after each module of a full block, the
    fresh count of a partial MLP as ``cache_cutfresh`` forms it."""
    kwargs = dict(
        cache_type="attention",
        fresh_ratio=R,
        force_fresh="global",
        fresh_threshold=N,
        ratio_scheduler=schedule,
        soft_fresh_weight=0.25,
        test_FLOPs=False,
    )
    cache_dic, current = ref.cache_init.cache_init(kwargs, num_steps=T)
    stub = torch.zeros(2, TOKENS, 1)
    rows = []
    for step in reversed(range(T)):
        current["step"] = step
        row = []
        for layer in range(BLOCKS):
            current["layer"] = layer
            ref.cal_type.cal_type(cache_dic, current)
            kind = current["type"]
            if kind == "full":
                for module in ("attn", "mlp"):
                    current["module"] = module
                    ref.force_init.force_init(cache_dic, current, stub)
                row.append(-1)
            elif kind == "ToCa":
                current["module"] = "mlp"
                ratio = torch.clamp(
                    torch.tensor(ref.fresh_ratio_scheduler.fresh_ratio_scheduler(cache_dic, current)), 0, 1
                )
                row.append(int(ratio * TOKENS))
            elif kind == "aggressive" and aggressive:
                row.append(-2)
            else:
                raise ValueError(f"unexpected type {kind!r}")
        rows.append(row)
    return rows


def token_grid_pixart(ref, T: int, N: int, R: float) -> list[list]:
    """PixArt-α: the block type in every block (counter counting up, as its DPM-Solver sets it; ToCa's
    ``global_force_fresh``, DuCa's ``cal_type``), ``force_init`` after each module of a full block; partial blocks
    reuse self-attention and recompute the cross-attention and MLP fresh counts of ``cache_cutfresh``."""
    kwargs = dict(
        cache_type="attention",
        fresh_ratio=R,
        force_fresh="global",
        fresh_threshold=N,
        ratio_scheduler="ToCa",
        soft_fresh_weight=0.25,
        test_FLOPs=False,
    )
    cache_dic, current = ref.cache_init.cache_init(kwargs, num_steps=T)
    stub = torch.zeros(2, TOKENS, 1)
    rows = []
    for step in range(T):
        current["step"] = step
        row = []
        for layer in range(BLOCKS):
            current["layer"] = layer
            if hasattr(ref, "cal_type"):
                ref.cal_type.cal_type(cache_dic, current)
                kind = current["type"]
            else:
                kind = "full" if ref.global_force_fresh.global_force_fresh(cache_dic, current) else "ToCa"
            if kind == "aggressive":
                row.append(-2)
            elif kind == "full":
                for module in ("attn", "cross-attn", "mlp"):
                    current["module"] = module
                    ref.force_init.force_init(cache_dic, current, stub)
                row.append(-1)
            else:
                counts = []
                for module in ("cross-attn", "mlp"):
                    current["module"] = module
                    ratio = ref.fresh_ratio_scheduler.fresh_ratio_scheduler(cache_dic, current)
                    counts.append(int(torch.clamp(torch.tensor(ratio), 0, 1) * TOKENS))
                row.append(counts)
        rows.append(row)
    return rows


def toca_flux_steps(ref, T: int, N: int, R: float) -> list[int]:
    """ToCa FLUX: ``cal_type`` once per step (counter counting up, as ``sampling.denoise`` sets it): 1 full, 0
    partial; its ``cache_init`` hard-wires R = 0.1 and N = 4, replaced per setting."""
    cache_dic, current = ref.cache_init.cache_init(list(range(T + 1)))
    cache_dic.update(fresh_ratio=R, fresh_threshold=N)
    current["num_steps"] = T
    rows = []
    for step in range(T):
        current["step"] = step
        ref.cal_type.cal_type(cache_dic, current)
        rows.append(1 if current["type"] == "full" else 0)
    return rows


def signal(i: int) -> float:
    """A smooth, non-polynomial test feature at step i (our order) for the Taylor forecasts."""
    return math.sin(0.3 * i) + 0.01 * i * i


def taylor_grid(ref, T: int, N: int, order: int, warmup: int) -> list[list]:
    """TaylorSeer DiT: ``cal_type`` once per step; on full steps ``taylor_cache_init`` and
    ``derivative_approximation`` of one module, on the others ``taylor_formula``."""
    cache_dic, current = ref.cache_init.cache_init({"interval": N, "max_order": order, "test_FLOPs": False}, T)
    cache_dic["first_enhance"] = warmup  # hard-wired to 2 in their DiT code; their FLUX code sets it per run
    current["layer"], current["module"] = 0, "attn"
    rows = []
    for step in reversed(range(T)):
        current["step"] = step
        ref.cal_type.cal_type(cache_dic, current)
        feature = torch.tensor(signal(T - 1 - step), dtype=torch.float64)
        if current["type"] == "full":
            ref.taylor_utils.taylor_cache_init(cache_dic, current)
            ref.taylor_utils.derivative_approximation(cache_dic, current, feature)
            factors = cache_dic["cache"][-1][0]["attn"]
            rows.append([1, len(factors), float(factors[0])])
        else:
            used = len(cache_dic["cache"][-1][0]["attn"])
            rows.append([0, used, float(ref.taylor_utils.taylor_formula(cache_dic, current))])
    return rows


def taylor_grid_flux(ref, T: int, N: int, order: int, warmup: int) -> list[list]:
    """TaylorSeer FLUX: as the DiT grid, its counter counting up from 0 (``sampling.denoise``); the settings its
    ``cache_init`` hard-wires (N 6, order 1, warm-up 3) are set per setting."""
    cache_dic, current = ref.cache_init.cache_init(list(range(T + 1)))
    cache_dic.update(fresh_threshold=N, max_order=order, first_enhance=warmup)
    current.update(num_steps=T, stream="double_stream", layer=0, module="attn")
    rows = []
    for step in range(T):
        current["step"] = step
        ref.cal_type.cal_type(cache_dic, current)
        factors = cache_dic["cache"][-1]["double_stream"][0]
        feature = torch.tensor(signal(step), dtype=torch.float64)
        if current["type"] == "full":
            ref.taylor_utils.taylor_cache_init(cache_dic, current)
            ref.taylor_utils.derivative_approximation(cache_dic, current, feature)
            rows.append([1, len(factors["attn"]), float(factors["attn"][0])])
        else:
            rows.append([0, len(factors["attn"]), float(ref.taylor_utils.taylor_formula(cache_dic, current))])
    return rows


def toca_settings():
    for T, N, R in itertools.product((20, 50), (2, 3, 4, 5, 6), (0.03, 0.07, 0.1, 0.3, 0.5)):
        yield {"T": T, "N": N, "R": R, "schedule": "ddim50"}
    for N, R in itertools.product((3, 4), (0.07, 0.1)):
        yield {"T": 250, "N": N, "R": R, "schedule": "ddpm250"}


def fora_settings():
    for T, N in itertools.product((10, 20, 25, 50, 100), range(1, 9)):
        yield {"T": T, "N": N, "R": 0.0, "schedule": "ddim50"}


def duca_settings():
    for T, N, R in itertools.product((20, 50, 100), (2, 3, 4, 5), (0.0, 0.05, 0.1, 0.2)):
        yield {"T": T, "N": N, "R": R, "schedule": "ddim50"}


def taylor_settings():
    for T, N, m, W in itertools.product((20, 50), (1, 2, 3, 4, 6), (0, 1, 2, 4), (1, 2, 3)):
        yield {"T": T, "N": N, "order": m, "warmup": W}


def toca_pixart_settings():
    for T, N, R in itertools.product((20, 25, 50), (2, 3, 4, 5), (0.0, 0.1, 0.3, 0.5)):
        yield {"T": T, "N": N, "R": R}


def duca_pixart_settings():
    for T, N, R in itertools.product((20, 25, 50), (2, 3, 4, 5), (0.0, 0.1, 0.75, 1.33)):
        yield {"T": T, "N": N, "R": R}


def toca_flux_settings():
    for T, N, R in itertools.product((10, 20, 28, 50), (1, 2, 3, 4, 6), (0.0, 0.1)):
        yield {"T": T, "N": N, "R": R}


def taylor_flux_settings():
    for T, N, m, W in itertools.product((20, 28, 50), (2, 3, 4, 6), (1, 2), (1, 3)):
        yield {"T": T, "N": N, "order": m, "warmup": W}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toca", type=Path, required=True, help="checkout of Shenyi-Z/ToCa")
    parser.add_argument("--duca", type=Path, required=True, help="checkout of Shenyi-Z/DuCa")
    parser.add_argument("--taylorseer", type=Path, required=True, help="checkout of Shenyi-Z/TaylorSeer")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    for name in ("toca", "duca", "taylorseer"):
        if not getattr(args, name).is_dir():
            parser.error(f"--{name} {getattr(args, name)} is not a folder: give a checkout of the reference repository")
    schedulers = ["cache_init", "cal_type", "force_init", "fresh_ratio_scheduler"]
    toca = load("ref_toca", args.toca / "DiT-ToCa" / "cache_functions", schedulers)
    duca = load("ref_duca", args.duca / "DuCa-DiT" / "cache_functions", schedulers)
    taylor = load("ref_taylorseer", args.taylorseer / "TaylorSeer-DiT" / "cache_functions", ["cache_init", "cal_type"])
    taylor.taylor_utils = load("ref_taylor_utils", args.taylorseer / "TaylorSeer-DiT", ["taylor_utils"]).taylor_utils
    pixart = args.toca / "PixArt-alpha-ToCa" / "diffusion" / "model" / "cache_functions"
    toca_pixart = load(
        "ref_toca_pixart", pixart, ["cache_init", "global_force_fresh", "force_init", "fresh_ratio_scheduler"]
    )
    toca_flux = load(
        "ref_toca_flux",
        args.toca / "flux-ToCa" / "src" / "flux" / "modules" / "cache_functions",
        ["cache_init", "cal_type"],
    )
    duca_pixart = load(
        "ref_duca_pixart",
        args.duca / "DuCa-PixArt-alpha" / "diffusion" / "model" / "cache_functions",
        ["cache_init", "cal_type", "force_init", "fresh_ratio_scheduler"],
    )
    flux = args.taylorseer / "TaylorSeer-FLUX" / "src" / "flux"
    taylor_flux = load("ref_taylorseer_flux", flux / "modules" / "cache_functions", ["cache_init", "cal_type"])
    taylor_flux.taylor_utils = load("ref_taylor_utils_flux", flux, ["taylor_utils"]).taylor_utils
    names = {"ddim50": "ToCa-ddim50", "ddpm250": "ToCa-ddpm250"}
    grids = {
        "toca": [
            {**s, "grid": token_grid(toca, s["T"], s["N"], s["R"], names[s["schedule"]], False)}
            for s in toca_settings()
        ],
        "toca_pixart": [
            {**s, "grid": token_grid_pixart(toca_pixart, s["T"], s["N"], s["R"])} for s in toca_pixart_settings()
        ],
        "toca_flux": [{**s, "grid": toca_flux_steps(toca_flux, s["T"], s["N"], s["R"])} for s in toca_flux_settings()],
        "fora": [{**s, "grid": token_grid(toca, s["T"], s["N"], 0.0, "ToCa-ddim50", False)} for s in fora_settings()],
        "duca": [{**s, "grid": token_grid(duca, s["T"], s["N"], s["R"], "ToCa", True)} for s in duca_settings()],
        "duca_pixart": [
            {**s, "grid": token_grid_pixart(duca_pixart, s["T"], s["N"], s["R"])} for s in duca_pixart_settings()
        ],
        "taylorseer": [
            {**s, "grid": taylor_grid(taylor, s["T"], s["N"], s["order"], s["warmup"])} for s in taylor_settings()
        ],
        "taylorseer_flux": [
            {**s, "grid": taylor_grid_flux(taylor_flux, s["T"], s["N"], s["order"], s["warmup"])}
            for s in taylor_flux_settings()
        ],
    }
    for name, settings in grids.items():
        path = args.out / f"{name}.json"
        with path.open("w") as f:
            f.write("[\n" + ",\n".join(json.dumps(s, separators=(",", ":")) for s in settings) + "\n]\n")
        print(f"{path}: {len(settings)} settings")


if __name__ == "__main__":
    main()
