"""Submit a training run to SLURM with submitit: ``python -m dcls_vision.launch experiment=... nodes=2 ...``.

The config is composed and validated here, before anything is queued, with ``${now:}`` and the run dir
resolved once, so every task and every requeue of the job trains into the same run dir. The job is a
:class:`submitit.helpers.Checkpointable`: on a preemption/time-limit signal the trainer saves ``last.pth`` at
the next step, submitit requeues the job, and the rerun resumes from it (see ``preemption.py``).
The run dir gets ``launch.json`` (what was submitted), ``command.sh`` (the command that reproduces it) and
``slurm/`` (submitit's batch script, pickles and per-task logs).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time as _time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

USAGE = """\
usage: python -m dcls_vision.launch experiment=NAME [SLURM options] [training overrides ...]
       python -m dcls_vision.launch downstream CONFIG [SLURM options] [downstream train arguments ...]
         (mmdet/mmseg fine-tuning: the arguments of python -m dcls_vision.downstream.train)

SLURM options (key=value; everything else is a training override, as for train.py):
  nodes=N              nodes (default 1)
  gpus_per_node=G      GPUs per node (default 0: CPU); one DDP process per GPU
  tasks_per_node=T     processes per node (default: G, or 1 without GPUs)
  cpus_per_task=C      CPUs per process (default: the partition's default)
  mem_gb=M             memory per node in GB (default: the partition's default)
  partition=P account=A qos=Q constraint=C   passed to sbatch as they are
  time=T               time limit: minutes, H:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (default 60)
  job_name=NAME        (default dcls-<experiment name>)
  signal_delay_s=S     the job gets SIGUSR2 S seconds before its time limit, checkpoints and requeues (120)
  max_requeues=R       requeues after time limits (default 10; preemptions do not count)
  wait=true            block until the job ends, print its final metrics, exit non-zero if it failed
"""

_INT_KEYS = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
             "signal_delay_s": 0, "max_requeues": 0}
_STR_KEYS = ("partition", "account", "qos", "constraint", "job_name", "time", "wait")


class LaunchError(ValueError):
    """A launch that cannot work; the message is one line naming the value and what is allowed."""


class JobFailed(LaunchError):
    """The job ran and failed; the message is its error's last line and where its log is."""


@dataclass
class LaunchOptions:
    """SLURM resources of one launch (``key=value`` arguments of the CLI)."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    job_name: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 10
    wait: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more #SBATCH flags (Python API only)
    # once one task has ended, srun kills the others after this long: a rank left hanging on a dead peer (or
    # frozen itself) must not hold the nodes until the time limit; set from trainer.dist_timeout_s by submit()
    task_exit_wait_s: int = 300

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1


def parse_time(value: str) -> int:
    """SLURM's time formats → whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise LaunchError(f"time={value!r} is not a SLURM time; allowed: minutes, H:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # minutes
        seconds = int(a) * 60
    minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise LaunchError(f"time={value!r} must be at least one minute")
    return minutes


def parse_args(argv: list[str]) -> tuple[LaunchOptions, list[str]]:
    """Split ``key=value`` arguments into launcher options and training overrides."""
    opts = LaunchOptions()
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*_INT_KEYS, *_STR_KEYS):
            overrides.append(arg)
            continue
        if key in _INT_KEYS:
            if not re.fullmatch(r"\d+", value) or int(value) < _INT_KEYS[key]:
                raise LaunchError(f"{key}={value!r} must be an integer >= {_INT_KEYS[key]}")
            setattr(opts, key, int(value))
        elif key == "time":
            opts.time_min = parse_time(value)
        elif key == "wait":
            if value.lower() not in ("true", "false"):
                raise LaunchError(f"wait={value!r} is not a boolean; allowed: true, false")
            opts.wait = value.lower() == "true"
        else:
            if not value:
                raise LaunchError(f"{key}= is empty; give a value or leave the option out")
            setattr(opts, key, value)
    if opts.signal_delay_s >= opts.time_min * 60:
        raise LaunchError(f"signal_delay_s={opts.signal_delay_s} must be shorter than the time limit "
                          f"({opts.time_min} min); allowed: a smaller delay or a longer time")
    return opts, overrides


def compose_config(overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The training config as ``train.py`` would compose it, validated, with the run dir made absolute."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from dcls_vision.engine.config import ConfigError, composition_error_line, validate_config

    if any(o.lstrip("+~").startswith("hydra") for o in overrides):
        bad = next(o for o in overrides if o.lstrip("+~").startswith("hydra"))
        raise LaunchError(f"{bad!r}: hydra.* settings do not apply here; allowed: training overrides "
                          "(use `python train.py -m hydra/launcher=slurm ...` for Hydra's launcher)")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise LaunchError(composition_error_line(e) or str(e).splitlines()[0]) from e  # schema type/key
    OmegaConf.resolve(cfg)  # ${now:...} once, here
    out = Path(str(cfg.trainer.output_dir)).expanduser().resolve()
    cfg.trainer.output_dir = str(out)
    try:
        validate_config(cfg)
    except ConfigError as e:
        raise LaunchError(str(e)) from e
    return cfg


def _set_threads() -> None:
    """CPU runs: one process per task shares the node's CPUs (torch would start one thread per core each)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    tasks_here = int((os.environ.get("SLURM_TASKS_PER_NODE") or "1").split("(")[0] or 1)
    n = int(per_task) if per_task else max(1, len(os.sched_getaffinity(0)) // max(tasks_here, 1))
    torch.set_num_threads(n)


class TrainJob(submitit.helpers.Checkpointable):
    """One task of the job: train the resolved config (DDP from the SLURM step's variables)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> dict[str, Any]:
        from dcls_vision.engine import train
        from dcls_vision.launch.preemption import EXIT_PREEMPTED, Preempted

        _set_threads()
        try:
            return train(OmegaConf.create(self.config))
        except Preempted as e:
            # last.pth is saved and the requeue is under way; ending without a result (not an exception) keeps
            # submitit from reporting the job as finished
            raise SystemExit(EXIT_PREEMPTED) from e


@dataclass
class Launch:
    """What :func:`submit` queued."""

    job: Any
    run_dir: Path
    files: dict[str, str]


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
    asked = (f"nodes={opts.nodes} tasks_per_node={opts.ntasks_per_node} gpus_per_node={opts.gpus_per_node}"
             + (f" cpus_per_task={opts.cpus_per_task}" if opts.cpus_per_task else "")
             + (f" mem_gb={opts.mem_gb}" if opts.mem_gb else "")
             + (f" constraint={opts.constraint}" if opts.constraint else "")
             + (f" time={opts.time_min}min" if opts.time_min else ""))
    part = ["-p", opts.partition] if opts.partition else []
    offer = _sinfo(*part, "-o", "%P: %D nodes, %c CPUs and %m MB per node, gres %G, features %f, time limit %l")
    offer = "; ".join(offer.replace("(null)", "none").replace("*:", ":").splitlines())
    return f"SLURM rejected the job: {reason} (asked: {asked}){'; the cluster has ' + offer if offer else ''}"


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found on PATH: run this on a SLURM login node (or install slurm-client; "
                          "for a local test cluster: bash slurm/local_cluster.sh start)")


def preflight(opts: LaunchOptions) -> None:
    """``sbatch --test-only`` with the job's resources: an unknown partition or resources the cluster cannot
    give fail here, in one line, instead of as a stack trace or a job pending forever."""
    require_sbatch()
    cmd = ["sbatch", "--test-only", f"--nodes={opts.nodes}", f"--ntasks-per-node={opts.ntasks_per_node}",
           f"--time={opts.time_min}"]
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos),
                        ("constraint", opts.constraint), ("cpus-per-task", opts.cpus_per_task),
                        ("gpus-per-node", opts.gpus_per_node or None),
                        ("mem", f"{opts.mem_gb}G" if opts.mem_gb else None)):
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


def submit(opts: LaunchOptions, overrides: list[str], argv: list[str] | None = None,
           config_dir: Path = CONFIG_DIR) -> Launch:
    """Compose + validate the config, queue the job, write ``launch.json`` and ``command.sh`` into the run dir."""
    require_sbatch()
    cfg = compose_config(overrides, config_dir)
    preflight(opts)
    opts.task_exit_wait_s = exit_wait_s(int(cfg.trainer.get("dist_timeout_s", 1800)))
    container = OmegaConf.to_container(cfg, resolve=True)
    argv = list(argv) if argv is not None else [*_opts_argv(opts), *overrides]
    return queue(TrainJob(container), opts, Path(cfg.trainer.output_dir), f"dcls-{cfg.experiment_name}", argv,
                 overrides, resubmit_hint=f"add trainer.output_dir={cfg.trainer.output_dir} to continue this one")


def queue(job_fn: Any, opts: LaunchOptions, run_dir: Path, default_name: str, argv: list[str],
          overrides: list[str], resubmit_hint: str) -> Launch:
    """Queue ``job_fn`` (a submitit Checkpointable) with ``opts``; logs under ``run_dir/slurm/<job id>/``, and
    ``launch.json`` / ``command.sh`` (``python -m dcls_vision.launch ARGV``) in ``run_dir``."""
    created = not run_dir.exists()
    folder = run_dir / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=opts.max_requeues)
    slurm_params: dict[str, Any] = {
        "slurm_partition": opts.partition, "slurm_account": opts.account, "slurm_qos": opts.qos,
        "slurm_constraint": opts.constraint, "slurm_signal_delay_s": opts.signal_delay_s,
        "slurm_additional_parameters": {"requeue": True, **opts.extra},
        "slurm_srun_args": [f"--wait={opts.task_exit_wait_s}"],
    }
    executor.update_parameters(
        name=opts.job_name or default_name, nodes=opts.nodes, tasks_per_node=opts.ntasks_per_node,
        gpus_per_node=opts.gpus_per_node or None, cpus_per_task=opts.cpus_per_task, mem_gb=opts.mem_gb,
        timeout_min=opts.time_min, **{k: v for k, v in slurm_params.items() if v is not None})
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit echoes sbatch's stderr; we report it in one line
            job = executor.submit(job_fn)
    except submitit.core.utils.FailedJobError as e:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise LaunchError(_explain_rejection(str(e) or captured.getvalue(), opts)) from None
    root = Path.cwd()
    files = {"run_dir": str(run_dir), "stdout": str(job.paths.stdout).replace("%t", "0"),
             "stderr": str(job.paths.stderr).replace("%t", "0"), "sbatch_script": str(job.paths.submission_file),
             "launch_json": str(run_dir / "launch.json"), "command": str(run_dir / "command.sh")}
    record = {"launcher": "dcls_vision.launch", "job_id": job.job_id, "submitted_at": _time.strftime("%FT%T%z"),
              "argv": argv, "overrides": overrides, "slurm": {**asdict(opts), "tasks_per_node": opts.ntasks_per_node},
              "cwd": str(root), "python": sys.executable, "git_commit": _git_commit(CONFIG_DIR.parent), **files}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "launch.json").write_text(json.dumps(record, indent=2) + "\n")
    cmd = shlex.join([sys.executable, "-m", "dcls_vision.launch", *argv])
    (run_dir / "command.sh").write_text(
        "#!/usr/bin/env bash\n"
        f"# Job {job.job_id}, submitted {record['submitted_at']}. Rerunning this submits the same job again;\n"
        f"# {resubmit_hint}.\n"
        f"cd {shlex.quote(str(root))}\n{cmd}\n")
    (run_dir / "command.sh").chmod(0o755)
    return Launch(job=job, run_dir=run_dir, files=files)


def _opts_argv(opts: LaunchOptions) -> list[str]:
    default = LaunchOptions()
    out = []
    for key in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "partition", "account", "qos",
                "constraint", "job_name", "signal_delay_s", "max_requeues"):
        if getattr(opts, key) != getattr(default, key):
            out.append(f"{key}={getattr(opts, key)}")
    if opts.time_min != default.time_min:
        out.append(f"time={opts.time_min}")
    return out


def wait_for(launch: Launch) -> dict[str, Any]:
    """Block until the job (all tasks, across requeues) ends; rank 0's metrics, or a one-line LaunchError."""
    job = launch.job
    try:
        results = job.results()
    except submitit.core.utils.UncompletedJobError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        last = next((ln.strip() for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln.strip())),
                    lines[-1].strip() if lines else "no output")
        lost = _lost_tasks(Path(launch.files["stderr"]))
        raise JobFailed(f"job {job.job_id} failed: {lost}{last} (log: {launch.files['stderr']}; every rank's: "
                        f"{Path(launch.files['stderr']).parent}/{job.job_id}_<rank>_log.err)") from None
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


def _final_line(r: dict[str, Any], downstream: bool) -> str:
    """The ``final: ...`` line of a finished job: its validation metrics and where it wrote."""
    if downstream:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        return f"final: {metrics} iter={r['iter']} work_dir={r['work_dir']}"
    line = f"final: top1={r['top1']:.2f} top5={r['top5']:.2f}"
    if r.get("ema_top1") is not None:
        line += f" ema_top1={r['ema_top1']:.2f} ema_top5={r['ema_top5']:.2f}"
    return line + f" best_top1={r['best_top1']:.2f} global_step={r['global_step']} run_dir={r['run_dir']}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    downstream = argv[0] == "downstream"
    try:
        opts, overrides = parse_args(argv[1:] if downstream else argv)
        if downstream:
            from dcls_vision.launch.downstream import submit_downstream

            launch = submit_downstream(opts, overrides, argv)
        else:
            launch = submit(opts, overrides, argv)
        job = launch.job
        where = f", partition {opts.partition}" if opts.partition else ""
        print(f"submitted job {job.job_id}: {opts.nodes} node(s) x {opts.ntasks_per_node} task(s){where} | "
              f"run dir {launch.run_dir}", flush=True)
        print(f"  logs: {launch.files['stdout']} (+ .err) | reproduce: bash {launch.files['command']}", flush=True)
        if opts.wait:
            print(_final_line(wait_for(launch), downstream), flush=True)
    except JobFailed as e:
        print(f"JobFailed: {e}", file=sys.stderr)
        return 1
    except LaunchError as e:
        print(f"LaunchError: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["JobFailed", "Launch", "LaunchError", "LaunchOptions", "TrainJob", "compose_config", "main", "parse_args",
           "parse_time", "submit", "wait_for"]
