"""``python -m dcls_vision.launch``: parse the options, submit a training or downstream job, print where it went
and, with ``wait=true``, its final metrics. Exit 0 on success, 1 when the job failed, 2 for a launch that cannot work.
"""

from __future__ import annotations

import sys
from typing import Any

from dcls_vision.utils.errors import EXIT_USER_ERROR, error_line

from .jobs import submit
from .options import USAGE, LaunchError, parse_args
from .slurm import JobFailed, wait_for


def final_line(r: dict[str, Any], downstream: bool) -> str:
    """The ``final: ...`` line of a finished job: its validation metrics and where it wrote."""
    if downstream:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        return f"final: {metrics} iter={r['iter']} work_dir={r['work_dir']}"
    if "mAP" in r:  # multi-label (audio) runs
        ema = f" ema_mAP={r['ema_mAP']:.2f}" if r.get("ema_mAP") is not None else ""
        return (
            f"final: mAP={r['mAP']:.2f} AUC={r['AUC']:.2f} d_prime={r['d_prime']:.3f}{ema} best_mAP={r['best_mAP']:.2f}"
            f" global_step={r['global_step']} run_dir={r['run_dir']}"
        )
    line = f"final: top1={r['top1']:.2f} top5={r['top5']:.2f}"
    if r.get("ema_top1") is not None:
        line += f" ema_top1={r['ema_top1']:.2f} ema_top5={r['ema_top5']:.2f}"
    return line + f" best_top1={r['best_top1']:.2f} global_step={r['global_step']} run_dir={r['run_dir']}"


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    downstream = argv[0] == "downstream"
    try:
        opts, overrides = parse_args(argv[1:] if downstream else argv)
        if downstream:
            from .downstream import submit_downstream

            launch = submit_downstream(opts, overrides, argv)
        else:
            launch = submit(opts, overrides, argv)
        job = launch.job
        where = f", partition {opts.partition}" if opts.partition else ""
        print(
            f"submitted job {job.job_id}: {opts.nodes} node(s) x {opts.ntasks_per_node} task(s){where} | "
            f"run dir {launch.run_dir}",
            flush=True,
        )
        print(f"  logs: {launch.files['stdout']} (+ .err) | reproduce: bash {launch.files['command']}", flush=True)
        if opts.wait:
            print(final_line(wait_for(launch), downstream), flush=True)
    except JobFailed as e:
        print(f"JobFailed: {e}", file=sys.stderr)
        return 1
    except LaunchError as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


__all__ = ["final_line", "main"]
