"""Benchmark one training step (forward + backward) of ``snn_delays`` on CPU, with and without flushing denormal
floats (``trainer.flush_denormal``), at the start (σ = max_delay // 2) and the end (σ = 0.23) of the σ schedule,
and an evaluation step (rounded delays). Prints JSON: seconds per step, median of ``--repeats``.

    python tools/bench_snn.py                                   # the quickstart net, batch 32 x 80 steps
    python tools/bench_snn.py --hidden 256 --batch 256 --steps 100 --repeats 3   # SHD size
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, repeats: int) -> float:
    model.train(train)
    times = []
    for i in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        if train:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-delay", type=int, default=25)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80, help="time steps per sample")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    import timm

    import dcls_vision.models  # noqa: F401
    from dcls_vision.engine.snn import flushed_denormals
    from dcls_vision.ops import dcls_layers

    torch.manual_seed(0)
    model = timm.create_model(
        "snn_delays", num_classes=20, in_chans=140, hidden_size=args.hidden, layers=args.layers,
        max_delay=args.max_delay,
    )  # fmt: skip
    x = torch.poisson(torch.full((args.batch, args.steps, 140), 0.3))
    y = torch.randint(0, 20, (args.batch,))
    rows = []
    for sigma in (float(args.max_delay // 2), 0.23):
        with torch.no_grad():
            for layer in dcls_layers(model):
                layer.sigma.fill_(sigma)
        for flush in (False, True):
            with flushed_denormals(flush):
                rows.append(
                    {
                        "sigma": sigma,
                        "flush_denormal": flush,
                        "train_s_per_step": round(_step_time(model, x, y, True, args.repeats), 4),
                        "eval_s_per_step": round(_step_time(model, x, y, False, args.repeats), 4),
                    }
                )
    result = {"tool": "bench_snn", "config": vars(args), "threads": torch.get_num_threads(), "results": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
