"""The SLURM side of a launch, shared by training and downstream jobs: check the request (``sbatch --test-only``),
queue a submitit job with its ``launch.json`` / ``command.sh`` records, wait for it and turn a failure into one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit

from dcls_vision.utils.io import atomic_write_text

from .options import LaunchError, LaunchOptions

PACKAGE_DIR = Path(__file__).resolve().parent  # its git commit (when it is a checkout) goes into launch.json


class JobFailed(RuntimeError):
    """The job ran and failed (not a user input error: exit 1); the message is its error's last line and its log."""


@dataclass
class Launch:
    """What :func:`submit` queued."""

    job: Any
    run_dir: Path
    files: dict[str, str]


def set_threads() -> None:
    """CPU runs: one process per task shares the node's CPUs (torch would start one thread per core each)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    tasks_here = int((os.environ.get("SLURM_TASKS_PER_NODE") or "1").split("(")[0] or 1)
    n = int(per_task) if per_task else max(1, len(os.sched_getaffinity(0)) // max(tasks_here, 1))
    torch.set_num_threads(n)


def _sinfo(*args: str) -> str:
    try:
        return subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _explain_rejection(stderr: str, opts: LaunchOptions) -> str:
    """sbatch's own words, plus what the cluster does offer."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "submission failed" in ln), lines[-1] if lines else "sbatch failed")
    reason = re.sub(r"^.*?(error|failed|allocation failure):\s*", "", reason)
    if "partition" in reason.lower():
        parts = sorted({p.rstrip("*") for p in _sinfo("-a", "-o", "%R").split()})
        return f"partition={opts.partition!r}: {reason}; allowed: {', '.join(parts) or '(sinfo shows none)'}"
    asked = (
        f"nodes={opts.nodes} tasks_per_node={opts.ntasks_per_node} gpus_per_node={opts.gpus_per_node}"
        + (f" cpus_per_task={opts.cpus_per_task}" if opts.cpus_per_task else "")
        + (f" mem_gb={opts.mem_gb}" if opts.mem_gb else "")
        + (f" constraint={opts.constraint}" if opts.constraint else "")
        + (f" time={opts.time_min}min" if opts.time_min else "")
    )
    part = ["-p", opts.partition] if opts.partition else []
    offer = _sinfo(*part, "-o", "%P: %D nodes, %c CPUs and %m MB per node, gres %G, features %f, time limit %l")
    offer = "; ".join(offer.replace("(null)", "none").replace("*:", ":").splitlines())
    return f"SLURM rejected the job: {reason} (asked: {asked}){'; the cluster has ' + offer if offer else ''}"


def require_sbatch() -> None:
    """One-line LaunchError when there is no SLURM client here."""
    if shutil.which("sbatch") is None:
        raise LaunchError(
            "sbatch not found on PATH: run this on a SLURM login node (or install slurm-client; "
            "for a local test cluster: bash slurm/local_cluster.sh start)"
        )


def preflight(opts: LaunchOptions) -> None:
    """``sbatch --test-only`` with the job's resources: an unknown partition or resources the cluster cannot
    give fail here, in one line, instead of as a stack trace or a job pending forever."""
    require_sbatch()
    cmd = [
        "sbatch",
        "--test-only",
        f"--nodes={opts.nodes}",
        f"--ntasks-per-node={opts.ntasks_per_node}",
        f"--time={opts.time_min}",
    ]
    for flag, value in (
        ("partition", opts.partition),
        ("account", opts.account),
        ("qos", opts.qos),
        ("constraint", opts.constraint),
        ("cpus-per-task", opts.cpus_per_task),
        ("gpus-per-node", opts.gpus_per_node or None),
        ("mem", f"{opts.mem_gb}G" if opts.mem_gb else None),
    ):
        if value is not None:
            cmd.append(f"--{flag}={value}")
    try:
        proc = subprocess.run([*cmd, "--wrap", "true"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch --test-only did not answer within 60 s: is slurmctld up (scontrol ping)?") from None
    if proc.returncode != 0:
        raise LaunchError(_explain_rejection(proc.stderr or proc.stdout, opts))


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def exit_wait_s(dist_timeout_s: int) -> int:
    """srun --wait: as long as a collective may wait for a peer, between 30 s and 5 min."""
    return min(300, max(30, dist_timeout_s))


def _executor(opts: LaunchOptions, folder: Path, default_name: str) -> submitit.AutoExecutor:
    """A submitit SLURM executor with ``opts``' resources; the job requeues itself (``--requeue``)."""
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=opts.max_requeues)
    slurm_params: dict[str, Any] = {
        "slurm_partition": opts.partition,
        "slurm_account": opts.account,
        "slurm_qos": opts.qos,
        "slurm_constraint": opts.constraint,
        "slurm_signal_delay_s": opts.signal_delay_s,
        "slurm_additional_parameters": {"requeue": True, **opts.extra},
        "slurm_srun_args": [f"--wait={opts.task_exit_wait_s}"],
    }
    executor.update_parameters(
        name=opts.job_name or default_name,
        nodes=opts.nodes,
        tasks_per_node=opts.ntasks_per_node,
        gpus_per_node=opts.gpus_per_node or None,
        cpus_per_task=opts.cpus_per_task,
        mem_gb=opts.mem_gb,
        timeout_min=opts.time_min,
        **{k: v for k, v in slurm_params.items() if v is not None},
    )
    return executor


def _write_records(
    job: Any, opts: LaunchOptions, run_dir: Path, argv: list[str], overrides: list[str], resubmit_hint: str
) -> dict[str, str]:
    """``launch.json`` (what was submitted, where its logs go) and ``command.sh`` (how to submit it again)."""
    root = Path.cwd()
    files = {
        "run_dir": str(run_dir),
        "stdout": str(job.paths.stdout).replace("%t", "0"),
        "stderr": str(job.paths.stderr).replace("%t", "0"),
        "sbatch_script": str(job.paths.submission_file),
        "launch_json": str(run_dir / "launch.json"),
        "command": str(run_dir / "command.sh"),
    }
    record = {
        "launcher": "dcls_vision.launch",
        "job_id": job.job_id,
        "submitted_at": _time.strftime("%FT%T%z"),
        "argv": argv,
        "overrides": overrides,
        "slurm": {**asdict(opts), "tasks_per_node": opts.ntasks_per_node},
        "cwd": str(root),
        "python": sys.executable,
        "git_commit": _git_commit(PACKAGE_DIR),
        **files,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "launch.json", json.dumps(record, indent=2) + "\n")
    cmd = shlex.join([sys.executable, "-m", "dcls_vision.launch", *argv])
    atomic_write_text(
        run_dir / "command.sh",
        "#!/usr/bin/env bash\n"
        f"# Job {job.job_id}, submitted {record['submitted_at']}. Rerunning this submits the same job again;\n"
        f"# {resubmit_hint}.\n"
        f"cd {shlex.quote(str(root))}\n{cmd}\n",
    )
    (run_dir / "command.sh").chmod(0o755)
    return files


def queue(
    job_fn: Any,
    opts: LaunchOptions,
    run_dir: Path,
    default_name: str,
    argv: list[str],
    overrides: list[str],
    resubmit_hint: str,
) -> Launch:
    """Queue ``job_fn`` (a submitit Checkpointable) with ``opts``; logs under ``run_dir/slurm/<job id>/``, and
    ``launch.json`` / ``command.sh`` (``python -m dcls_vision.launch ARGV``) in ``run_dir``."""
    created = not run_dir.exists()
    executor = _executor(opts, run_dir / "slurm", default_name)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit echoes sbatch's stderr; we report it in one line
            job = executor.submit(job_fn)
    except submitit.core.utils.FailedJobError as e:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise LaunchError(_explain_rejection(str(e) or captured.getvalue(), opts)) from None
    files = _write_records(job, opts, run_dir, argv, overrides, resubmit_hint)
    return Launch(job=job, run_dir=run_dir, files=files)


def wait_for(launch: Launch) -> dict[str, Any]:
    """Block until the job (all tasks, across requeues) ends; rank 0's metrics, or a one-line LaunchError."""
    job = launch.job
    try:
        results = job.results()
    except submitit.core.utils.UncompletedJobError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        last = next(
            (ln.strip() for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln.strip())),
            lines[-1].strip() if lines else "no output",
        )
        lost = _lost_tasks(Path(launch.files["stderr"]))
        raise JobFailed(
            f"job {job.job_id} failed: {lost}{last} (log: {launch.files['stderr']}; every rank's: "
            f"{Path(launch.files['stderr']).parent}/{job.job_id}_<rank>_log.err)"
        ) from None
    return next((r for r in results if isinstance(r, dict) and r.get("rank", 0) == 0), results[0])


def _lost_tasks(stderr: Path) -> str:
    """What srun said about tasks that did not end normally (``srun: error: node2: task 1: Killed``), as
    ``rank 1 on node2: Killed; ``: the rank that died first is the cause, the others' errors follow from it."""
    try:
        text = stderr.read_text(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"srun: error: (\S+): tasks? ([\d,-]+): (.+)", text)
    killed = [f"rank {t} on {node}: {why.strip()}" for node, t, why in found if "exit code 1" not in why]
    return "; ".join(killed) + "; " if killed else ""


__all__ = [
    "JobFailed",
    "Launch",
    "LaunchError",
    "exit_wait_s",
    "preflight",
    "queue",
    "require_sbatch",
    "set_threads",
    "wait_for",
]
