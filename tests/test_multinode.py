"""Launches across two nodes: a real two-node SLURM cluster on this machine (``local_cluster.sh start --nodes 2``:
node1 and node2 each in its own network namespace, hostname and address), so DDP (gloo) crosses network stacks.

Every launch path trains the quickstart experiment with one process per node and is compared with the same
global batch (2 x 16) on one node: same steps, same weights. The submitting shell exports MASTER_ADDR=127.0.0.1
and MASTER_PORT=29555 (as a user's shell may): jobs must use their own first node and job-id port, or node2
cannot reach the store and the jobs sharing node1 collide. Failure modes: a task killed on node2 and a task
frozen on node2 end the job with an error naming the rank and node, within ``trainer.dist_timeout_s``.
Downstream fine-tuning (``dcls_vision.launch downstream``, tiny UperNet) is compared the same way: two nodes x 1
task against one node x 2 tasks. All jobs are submitted at module start so that they overlap on the 2 cores.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import torch
from test_slurm import (
    STEPS,
    TINY,
    WAIT_S,
    _assert_same_run,
    _finish,
    _popen,
    _restarts,
    _run,
    _wait_slurm,
    _when_training,
)

from dcls_vision.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
INHERITED = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}  # a user's shell; must not reach the jobs' DDP
KILL_TIMEOUT_S, HANG_TIMEOUT_S = 20, 15
TINY_SEG = "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
SEG_ITERS = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "randomness.seed=0"]  # same seed: same weights


@contextmanager
def _inherited_env():
    """The submitting shell exports INHERITED (sbatch copies it into every job); restored afterwards."""
    saved = {k: os.environ.get(k) for k in INHERITED}
    os.environ.update(INHERITED)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _mm_missing() -> str | None:
    """Why downstream runs cannot be tested here (as in test_downstream.py), or None."""
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops: mmseg models need them)
        import mmseg  # noqa: F401
    except ImportError as err:  # pragma: no cover - machines without the mm extra
        if os.environ.get("CI"):
            raise ImportError(f"CI must run the downstream tests: {err}") from err
        return f"OpenMMLab extra not installed ({err}); run `bash tools/install_mm.sh`"
    return None


def _launch(run_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    return _popen(
        [
            sys.executable,
            "-m",
            "dcls_vision.launch",
            *TINY,
            "time=10",
            "wait=true",
            f"trainer.output_dir={run_dir}",
            *args,
        ],
        log,
    )


def _task_pid(job_id: str, rank: int) -> int | None:
    """The PID of the job's training task ``rank`` (from /proc: the task's SLURM environment)."""
    want = (f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if all(w in env for w in want) and b"submitit.core._submit" in cmd:
            return int(entry)
    return None


def _signal_rank1(run_dir: Path, log: Path, sig: signal.Signals, done: dict, key: str) -> threading.Thread:
    """Once training runs, send ``sig`` to rank 1 (on node2); records when."""

    def act() -> None:
        job_id = re.search(r"submitted job (\d+)", log.read_text()).group(1)
        pid = _task_pid(job_id, 1)
        assert pid, f"no rank 1 task of job {job_id}"
        done[key + "_host"] = Path(f"/proc/{pid}/environ").read_bytes().split(b"SLURMD_NODENAME=")[1].split(b"\0")[0]
        os.kill(pid, sig)

    return _when_training(run_dir, act, done, key)


def _sbatch2(run_dir: Path, out: Path, *overrides: str) -> str:
    env = {**os.environ, "NPROC_PER_NODE": "1", "RUN_DIR": str(run_dir)}
    proc = _run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--cpus-per-task=1",
            "--time=10",
            "-o",
            str(out),
            "slurm/train.sbatch",
            *overrides,
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _launch_downstream(work: Path, log: Path, ade_root: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dcls_vision.launch", "downstream", TINY_SEG, "--work-dir", str(work)]
    cmd += ["--data-root", str(ade_root), "--cfg-options", *SEG_ITERS, "cpus_per_task=1", "time=10", "wait=true"]
    return _popen([*cmd, *args], log)


@pytest.fixture(scope="module")
def downstream2(tmp_path_factory, request):
    """Tiny UperNet fine-tuning, 2 iterations: two nodes x 1 task and the one-node x 2 tasks reference, at once."""
    why = _mm_missing()
    if why:
        pytest.skip(why)
    request.getfixturevalue("cluster2")  # only once mm is known to be there: starting it takes a while
    from dcls_vision.downstream.datasets import make_ade

    tmp = tmp_path_factory.mktemp("downstream2")
    ade = make_ade(tmp / "ade", num_train=6, num_val=3, size=128)["root"]
    d: dict = {"tmp": tmp}
    with _inherited_env():
        for key, nodes, tasks in (("ref", 1, 2), ("two", 2, 1)):
            d[key + "_dir"] = tmp / key
            d[key] = _launch_downstream(
                d[key + "_dir"], tmp / f"{key}.log", ade, f"nodes={nodes}", f"tasks_per_node={tasks}"
            )
    yield d
    for key in ("ref", "two"):
        if d[key].poll() is None:
            d[key].kill()


@pytest.fixture(scope="module")
def jobs2(cluster2, tmp_path_factory, request):
    """Submit every two-node job (and the one-node reference) at once; the tests wait for their own."""
    if not _mm_missing() and any("downstream2" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("downstream2")  # queued first: overlaps with the rest
    tmp = tmp_path_factory.mktemp("multinode")
    j: dict = {"tmp": tmp, "acted": {}}
    with _inherited_env():
        j["ref_dir"] = tmp / "ref_1node"
        j["ref"] = _launch(j["ref_dir"], tmp / "ref.log", "nodes=1", "tasks_per_node=2")
        j["launch_dir"] = tmp / "launch_2nodes"
        j["launch"] = _launch(j["launch_dir"], tmp / "launch.log", "nodes=2", "tasks_per_node=1")
        j["req_dir"] = tmp / "sbatch_requeued"
        j["req_id"] = _sbatch2(j["req_dir"], tmp / "sbatch.out", *TINY)
        j["req_watch"] = _when_training(
            j["req_dir"], lambda: _run(["scontrol", "requeue", j["req_id"]], check=True), j["acted"], "requeue"
        )
        j["sweep_dir"] = tmp / "sweep"
        j["hydra"] = _popen(
            [
                sys.executable,
                "train.py",
                "-m",
                "hydra/launcher=slurm",
                "hydra.launcher.nodes=2",
                "hydra.launcher.tasks_per_node=1",
                "hydra.launcher.timeout_min=10",
                f"hydra.sweep.dir={j['sweep_dir']}",
                *TINY,
            ],
            tmp / "hydra.log",
        )
        j["kill_dir"] = tmp / "killed"
        j["kill"] = _launch(
            j["kill_dir"], tmp / "kill.log", "nodes=2", "tasks_per_node=1", f"trainer.dist_timeout_s={KILL_TIMEOUT_S}"
        )
        j["kill_watch"] = _signal_rank1(j["kill_dir"], tmp / "kill.log", signal.SIGKILL, j["acted"], "kill")
        j["hang_dir"] = tmp / "frozen"
        j["hang"] = _launch(
            j["hang_dir"], tmp / "hang.log", "nodes=2", "tasks_per_node=1", f"trainer.dist_timeout_s={HANG_TIMEOUT_S}"
        )
        j["hang_watch"] = _signal_rank1(j["hang_dir"], tmp / "hang.log", signal.SIGSTOP, j["acted"], "hang")
    yield j
    for key in ("ref", "launch", "hydra", "kill", "hang"):
        if key in j and j[key].poll() is None:
            j[key].kill()


@pytest.fixture(scope="module")
def reference2(jobs2):
    """One node, two processes: the same global batch as every two-node run."""
    out = _finish(jobs2["ref"], jobs2["tmp"] / "ref.log")
    assert jobs2["ref"].returncode == 0, out[-3000:]
    assert load_checkpoint(jobs2["ref_dir"] / "last.pth")["sampler"]["world_size"] == 2
    return jobs2["ref_dir"]


# ------------------------------------------------------------------------------------------------- tests
def test_two_node_cluster_has_two_hosts(cluster2):
    """Each task runs on its own node: own hostname, own address, and the first node resolves from both."""
    proc = _run(
        [
            "srun",
            "-N2",
            "--ntasks-per-node=1",
            "-l",
            "bash",
            "-c",
            "echo $(hostname) $SLURMD_NODENAME $(getent hosts node1 | cut -d' ' -f1) "
            "$(ip -4 -o addr show scope global | awk '{print $4}')",
        ],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = sorted(line.split(": ", 1)[1].split() for line in proc.stdout.strip().splitlines())
    assert [r[:2] for r in rows] == [["node1", "node1"], ["node2", "node2"]], rows
    assert rows[0][2] == rows[1][2] == rows[0][3].split("/")[0]  # node1's address, seen from both nodes
    assert rows[0][3] != rows[1][3] and len(rows[0]) == len(rows[1]) == 4  # one address each, different


@pytest.mark.slow
def test_launch_two_nodes_matches_one_node(jobs2, reference2):
    out = _finish(jobs2["launch"], jobs2["tmp"] / "launch.log")
    assert jobs2["launch"].returncode == 0, out[-3000:]
    assert "2 node(s) x 1 task(s)" in out
    run_dir = jobs2["launch_dir"]
    _assert_same_run(run_dir, reference2)
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    logs = run_dir / "slurm" / job_id  # every rank's log, reachable from the run dir
    assert "hostname=node1" in (logs / f"{job_id}_0_log.out").read_text()
    assert "hostname=node2" in (logs / f"{job_id}_1_log.out").read_text()


@pytest.mark.slow
def test_sbatch_two_nodes_requeued_resumes_on_both(jobs2, reference2):
    """train.sbatch --nodes=2 (srun + one torchrun per node), ``scontrol requeue`` mid-run: saves, requeues,
    resumes on both nodes and ends with the weights of the uninterrupted one-node run."""
    run_dir, job_id = jobs2["req_dir"], jobs2["req_id"]
    jobs2["req_watch"].join(WAIT_S)
    assert "requeue" in jobs2["acted"]
    state = _wait_slurm(job_id)
    out = (jobs2["tmp"] / "sbatch.out").read_text()
    assert state == "COMPLETED", out[-3000:]
    assert _restarts(job_id) == 1 and "restart 1:" in out
    assert "2 node(s) x 1 process(es), rendezvous node1:" in out
    port = 20000 + int(job_id) % 20000
    assert f"rendezvous node1:{port}," in out  # the job's port, not the exported MASTER_PORT
    log = (run_dir / "log.txt").read_text()
    m = re.search(r"stopped by SIGTERM at .*\(global step (\d+)\)", log)
    assert m and 0 < int(m.group(1)) < STEPS, log
    assert "resumed from" in log
    _assert_same_run(run_dir, reference2)
    for restart in (0, 1):  # every rank's output, per start and node, under the run dir
        for node in ("node1", "node2"):
            logs = list((run_dir / "logs" / f"restart{restart}" / node).glob("*/attempt_0/0/stderr.log"))
            assert len(logs) == 1, (restart, node, logs)


@pytest.mark.slow
def test_hydra_sweep_two_nodes_matches_one_node(jobs2, reference2):
    out = _finish(jobs2["hydra"], jobs2["tmp"] / "hydra.log")
    assert jobs2["hydra"].returncode == 0, out[-3000:]
    run_dir = jobs2["sweep_dir"] / "0_quickstart"
    _assert_same_run(run_dir, reference2)
    assert "2 process(es) on cpu" in (run_dir / "log.txt").read_text()
    hosts = {
        m
        for f in (jobs2["sweep_dir"] / ".submitit").rglob("*_log.out")
        for m in re.findall(r"hostname=(node\d)", f.read_text())
    }
    assert hosts == {"node1", "node2"}


def _downstream_run(d: dict, key: str) -> tuple[str, list[str], dict]:
    """A finished downstream launch: its output, the host of each rank, its final checkpoint (weights_only)."""
    out = _finish(d[key], d["tmp"] / f"{key}.log", timeout=600)
    assert d[key].returncode == 0, out[-3000:]
    work = d[key + "_dir"]
    assert re.search(r"^final: .*mIoU=[\d.]+ .*iter=2 work_dir=" + re.escape(str(work)) + "$", out, re.M), out[-3000:]
    runlog = next(work.glob("*/*.log")).read_text()
    assert "Distributed training: True" in runlog and "GPU number: 2" in runlog  # one world of two processes
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    logs = work / "slurm" / job_id  # every rank's submitit log, under the work dir
    hosts = [re.search(r"hostname=(\w+)", (logs / f"{job_id}_{r}_log.out").read_text()).group(1) for r in (0, 1)]
    return out, hosts, torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_downstream_two_nodes_matches_one_node(downstream2):
    """``dcls_vision.launch downstream CONFIG ... nodes=2 tasks_per_node=1``: rank 0 on node1, rank 1 on node2, one
    gloo group across the namespaces (the exported MASTER_ADDR/PORT ignored), and after 2 iterations the weights
    of one node x 2 tasks (same global batch 2 x 2, same seed)."""
    out, hosts, two = _downstream_run(downstream2, "two")
    assert "2 node(s) x 1 task(s)" in out and hosts == ["node1", "node2"], (hosts, out[-2000:])
    ref_out, ref_hosts, ref = _downstream_run(downstream2, "ref")
    assert "1 node(s) x 2 task(s)" in ref_out and ref_hosts[0] == ref_hosts[1], ref_hosts
    assert two["optimizer"]["state"] and two["state_dict"].keys() == ref["state_dict"].keys()  # trained, same model
    worst = max((two["state_dict"][k].double() - v.double()).abs().max().item() for k, v in ref["state_dict"].items())
    assert worst <= 1e-6, f"largest weight difference two nodes vs one node: {worst:.3g}"
    miou = [re.search(r"^final: .*mIoU=([\d.]+)", o, re.M).group(1) for o in (out, ref_out)]
    assert miou[0] == miou[1], miou


def _failed_within(jobs2: dict, key: str, limit_s: float) -> str:
    proc, log = jobs2[key], jobs2["tmp"] / f"{key}.log"
    out = _finish(proc, log)
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    _wait_slurm(job_id)
    end = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "End"]).stdout.strip().splitlines()[-1]
    ended = datetime.fromisoformat(end).timestamp()  # when SLURM ended the job (local time, as time.time())
    assert key in jobs2["acted"], f"rank 1 was never signalled:\n{out[-3000:]}"
    assert proc.returncode == 1, out[-3000:]
    assert ended - jobs2["acted"][key] < limit_s, f"{ended - jobs2['acted'][key]:.0f}s\n{out[-2000:]}"
    assert jobs2["acted"][key + "_host"] == b"node2"
    last = out.strip().splitlines()[-1]
    assert last.startswith("JobFailed: job ") and "rank 1 on node2: " in last, last
    return last


@pytest.mark.slow
def test_task_killed_on_one_node_fails_the_job_naming_it(jobs2):
    """SIGKILL to rank 1 on node2 mid-run: rank 0's gloo collective fails at once; the job's error names the
    rank and node that died, and every rank's log path."""
    last = _failed_within(jobs2, "kill", KILL_TIMEOUT_S + 40)
    assert re.search(r"rank 1 on node2: Killed; RuntimeError: .*(Connection|closed|reset)", last), last
    assert "_<rank>_log.err" in last


@pytest.mark.slow
def test_frozen_task_ends_within_dist_timeout(jobs2):
    """SIGSTOP to rank 1 on node2 (a hung node: its sockets stay open): rank 0 gives up after
    trainer.dist_timeout_s, srun ends the frozen task, the job fails naming it instead of hanging."""
    last = _failed_within(jobs2, "hang", HANG_TIMEOUT_S + 30 + 45)  # timeout + srun --wait + polling
    assert re.search(r"rank 1 on node2: Killed; .*(Timed out|timeout|timed out)", last, re.I), last


def test_local_cluster_rejects_bad_node_count():
    proc = _run(["bash", "slurm/local_cluster.sh", "start", "--nodes", "0"])
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "local_cluster.sh: --nodes '0' is not allowed; allowed: 1 to 9"
    ), proc.stderr


def test_stop_removes_what_start_made(cluster2):
    """Last in the module: ``stop`` ends the daemons and removes the namespaces, links and bridge, twice over."""
    if not cluster2["started"]:
        pytest.skip("the two-node cluster was already running before the tests: left as it was")
    state = Path(cluster2["env"]["DCLS_SLURM_DIR"])
    made = (state / "net").read_text().split()[1::2]
    pids = [int(p) for p in (state / "pids").read_text().split()[1::2]]
    assert sum(1 for m in made if m.endswith(("-node1", "-node2"))) == 2 and len(made) == 5, made
    for _ in range(2):
        proc = subprocess.run(
            ["bash", "slurm/local_cluster.sh", "stop"],
            cwd=ROOT,
            env=cluster2["env"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr
    netns = _run(["ip", "netns", "list"]).stdout
    links = _run(["ip", "-o", "link"]).stdout
    assert not [m for m in made if m in netns or f" {m}:" in links or f" {m}@" in links], (netns, links)
    alive = [
        p
        for p in pids
        if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[1].split()[0]
    ]
    assert not alive and not (state / "net").exists() and not (state / "pids").exists()
