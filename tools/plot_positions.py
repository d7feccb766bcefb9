"""Learned DCLS positions: histograms per stage along each axis (thesis Fig. 2.3 / 6.2), 2-D histograms
(Fig. 6.4) and kernel images from a checkpoint; position speed curves next to the LR schedule from a run
directory (Fig. 2.4 / 2.5). Positions are offsets from the kernel centre; axis 0 = H, axis 1 = W.

    python tools/plot_positions.py --run-dir outputs/quickstart/RUN            # speed curves + its last.pth
    python tools/plot_positions.py --checkpoint outputs/quickstart/RUN/best.pth --channels 0 5 9
    python tools/plot_positions.py --model convnext_tiny_dcls_gauss            # the initialisation, for reference
    python tools/plot_positions.py --run-dir outputs/snn_quickstart/RUN --delays  # SNN delays before/after training
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_model_args, add_out_arg, make_parser, positive_int, run_tool, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("plot_positions.py", __doc__)
    add_model_args(parser)
    parser.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="trainer run dir: speed curves from metrics.jsonl (and positions from its last.pth "
        "when no --checkpoint/--model is given)",
    )
    parser.add_argument(
        "--channels",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3],
        metavar="C",
        help="output channels whose kernels are drawn (default: 0 1 2 3)",
    )
    parser.add_argument(
        "--bins-per-cell", type=positive_int, default=1, help="histogram bins per kernel grid cell (default 1)"
    )
    parser.add_argument(
        "--delays",
        action="store_true",
        help="spiking nets (snn_delays): histograms of the synaptic delays in time steps at the run's "
        "initialisation (rebuilt from its config and seed) and in the checkpoint (delays_hist.png)",
    )
    add_out_arg(parser, "positions")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis import plots
    from dcls_vision.analysis.errors import AnalysisError
    from dcls_vision.analysis.loading import load
    from dcls_vision.analysis.positions import histograms, kernel_images, position_groups, speed_curves

    out = Path(args.out)
    result: dict[str, Any] = {"tool": "plot_positions", "png": {}}
    checkpoint = args.checkpoint
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise AnalysisError(f"--run-dir {args.run_dir!r} is not a directory; allowed: a trainer run directory")
        curves = speed_curves(run_dir)
        result["speed"] = curves
        result["png"]["speed"] = str(plots.speed_plot(curves, out / "speed.png"))
        if not checkpoint and not args.model and any((run_dir / n).is_file() for n in ("last.pth", "best.pth")):
            checkpoint = str(run_dir)
    elif not checkpoint and not args.model:
        raise AnalysisError("nothing to plot; allowed: --checkpoint PATH, --run-dir DIR or --model NAME")
    if checkpoint or args.model:
        loaded = load(args.model, checkpoint, args.ema, args.checkpoint_model)
        groups = position_groups(loaded.model)
        hists = [histograms(g, args.bins_per_cell) for g in groups]
        kernels = [kernel_images(g, args.channels) for g in groups]
        result.update(
            model=loaded.describe(),
            positions=hists,
            kernels=[{k: v for k, v in img.items() if k != "image"} for row in kernels for img in row],
        )
        result["png"]["histograms"] = str(plots.position_histograms(hists, out / "positions_hist.png"))
        if any("hist2d" in h for h in hists):
            result["png"]["hist2d"] = str(plots.position_hist2d(hists, out / "positions_hist2d.png"))
        result["png"]["kernels"] = str(plots.kernel_grid(kernels, out / "kernels.png"))
        if args.delays:
            result["delays"] = _delays(loaded)
            result["png"]["delays"] = str(
                plots.delay_histograms(result["delays"]["before"], result["delays"]["after"], out / "delays_hist.png")
            )
    return result


def _delays(loaded: Any) -> dict[str, Any]:
    """Delay histograms of the checkpoint and of the initialisation its run started from."""
    from dcls_vision.analysis.errors import AnalysisError
    from dcls_vision.analysis.positions import delay_histograms, initial_model

    if loaded.config is None:
        raise AnalysisError(
            "--delays needs a checkpoint written by train.py (its config and seed); allowed: "
            "--checkpoint of a trainer run (last.pth, best.pth or the run dir)"
        )
    initial = initial_model(loaded.config, loaded.num_classes, loaded.in_chans)
    return {"before": delay_histograms(initial), "after": delay_histograms(loaded.model)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "positions.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
