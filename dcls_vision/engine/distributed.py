"""Process-group setup and small collective helpers.

``init_distributed`` reads torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or, without
them, those of a SLURM job step (``srun``: SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, the node list),
so ``srun --ntasks-per-node=G python train.py`` and submitit tasks need no wrapper.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def _env_world() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's or a SLURM step's environment, or None for one process.

    SLURM counts only inside a job step (SLURM_STEP_ID is set): a batch script also has SLURM_PROCID=0 and
    SLURM_NTASKS=N, and must not wait there for N-1 peers that never come.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    env = os.environ
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        rank = int(env["SLURM_PROCID"])
        return rank, world, int(env.get("SLURM_LOCALID", 0))
    return None


def slurm_master_addr() -> str:
    """First host of the step's node list (``scontrol show hostnames`` expands ``node[01-04]``)."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
    if not nodelist:
        return "127.0.0.1"
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        return out.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:  # no usable scontrol here: submitit's parser of the same syntax
        from submitit.slurm.slurm import _parse_node_list

        return _parse_node_list(nodelist)[0]
    except Exception as e:
        raise RuntimeError(
            f"cannot expand SLURM node list {nodelist!r} (scontrol show hostnames failed): {e}; set MASTER_ADDR instead"
        ) from e


def slurm_master_port(job_id: str | None = None) -> int:
    """A port in [20000, 40000) derived from the job id: the same in every task and after a requeue."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID", "0")
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _export_rendezvous() -> None:
    """MASTER_ADDR/PORT for ``env://`` when a SLURM step (not torchrun) started the processes.

    Always the job's own first node and job-id port: sbatch copies the submitting shell's environment into the
    job, and an exported MASTER_PORT (left from a torchrun session, a .bashrc) would send every job to the same
    port on a shared first node, an exported MASTER_ADDR=localhost would leave the other nodes waiting until
    the timeout. ``DCLS_MASTER_ADDR`` / ``DCLS_MASTER_PORT`` choose them on purpose.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    export_slurm_rendezvous()


def export_slurm_rendezvous() -> None:
    """Set MASTER_ADDR/PORT to ``DCLS_MASTER_ADDR/PORT`` or the job's first node and job-id port (see above);
    the one rule for training and downstream SLURM steps."""
    os.environ["MASTER_ADDR"] = os.environ.get("DCLS_MASTER_ADDR") or slurm_master_addr()
    os.environ["MASTER_PORT"] = os.environ.get("DCLS_MASTER_PORT") or str(slurm_master_port())


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA exists, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # a task bound to one GPU (srun --gpus-per-task=1 / --gpu-bind) sees it as cuda:0 whatever its local rank
        dev = torch.device("cuda", local_rank if torch.cuda.device_count() != 1 else 0)
    return dev


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout_s: int = 1800
) -> tuple[int, int, int, torch.device]:
    """Join the process group when launched by torchrun or srun; returns ``(rank, world_size, local_rank, device)``.

    Backend: nccl for CUDA devices, gloo otherwise. A single process (no env vars) gets (0, 1, 0, device).
    ``timeout_s`` (``trainer.dist_timeout_s``) bounds every collective: a rank whose peer hangs (a node gone, a
    frozen process) fails with an error after it instead of waiting for the job's time limit.
    """
    env = _env_world()
    if env is None or env[1] <= 1:
        return 0, 1, 0, resolve_device(device, 0)
    rank, world, local_rank = env
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        _export_rendezvous()
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return rank, world, local_rank, dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity on one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
