"""Benchmark whole ConvNeXt-T models on CPU: one training step and one eval forward, printed as JSON.

Side by side in one run: the 7x7 baseline (timm ``convnext_tiny``), the same network with PyTorch's dense
23x23 depthwise convs (``kernel_sizes=23``) and ConvNeXt-T-dcls Gauss 23/26. Each (model, mode) runs in a
fresh process, so its peak RSS (``ru_maxrss``) is its own; ``rss_after_build_mb`` is the part taken by the
interpreter, libraries, weights and input. Train step = forward + cross-entropy + backward (no optimizer);
eval = ``model.eval()`` forward under ``torch.no_grad()`` (DCLS layers then reuse their cached dense kernel).

    python tools/bench_model.py                                   # batch 8, 224 px, channels_last
    python tools/bench_model.py --batch 2 --img-size 128 --models baseline7 dcls_gauss --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import dcls_vision.models  # noqa: F401  (registers the DCLS variants)

MODELS = {
    "baseline7": ("convnext_tiny", {}),
    "dense23": ("convnext_tiny", {"kernel_sizes": 23}),
    "dcls_gauss": ("convnext_tiny_dcls_gauss", {}),
}
MODES = ("train", "eval")
TARGETS = {  # DCLS Gauss 23/26 against the others (ratios of median seconds)
    "train_vs_baseline7": 2.0,
    "eval_vs_baseline7": 1.4,
    "eval_vs_dense23": 1.05,
}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    model_key: str,
    mode: str,
    batch: int,
    img_size: int,
    channels_last: bool,
    warmup: int,
    repeats: int,
    threads: int | None,
) -> dict:
    """Time ``warmup + repeats`` steps of one model in this (fresh) process; median seconds and peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, kwargs = MODELS[model_key]
    model = timm.create_model(name, **kwargs)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, img_size, img_size).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,))
    model.train(mode == "train")
    rss_after_build = _rss_mb()

    def step() -> None:
        if mode == "train":
            F.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "model": model_key,
        "mode": mode,
        "timm_name": name,
        "timm_kwargs": kwargs,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "seconds_median": statistics.median(times),
        "seconds_all": [round(t, 4) for t in times],
        "rss_after_build_mb": round(rss_after_build, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per (model, mode); the median is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before (oneDNN set-up, kernel cache)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    for flag in ("batch", "img_size", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} is invalid; allowed: integers >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup} is invalid; allowed: integers >= 0")

    results: dict[str, dict[str, dict]] = {key: {} for key in args.models}
    for mode in args.modes:
        for key in args.models:
            results[key][mode] = _in_fresh_process(
                key, mode, args.batch, args.img_size, args.channels_last, args.warmup, args.repeats, args.threads
            )
            print(f"{key:>10} {mode:>5}: {results[key][mode]['seconds_median']:.3f} s", file=sys.stderr)

    ratios: dict[str, float] = {}
    for mode in args.modes:
        for other in ("baseline7", "dense23"):
            for key in args.models:
                if key != other and other in results:
                    ratios[f"{key}_{mode}_vs_{other}"] = round(
                        results[key][mode]["seconds_median"] / results[other][mode]["seconds_median"], 3
                    )
    targets = {}
    for name, bound in TARGETS.items():
        mode, other = name.split("_vs_")
        ratio = ratios.get(f"dcls_gauss_{mode}_vs_{other}")
        if ratio is not None:
            targets[f"dcls_gauss_{name}"] = {"ratio": ratio, "target": bound, "met": ratio <= bound}
    report = {
        "config": {
            **vars(args),
            "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": multiprocessing.cpu_count(),
        },
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
