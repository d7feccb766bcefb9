"""SLURM launches on a real single-node cluster on 127.0.0.1 (slurm/local_cluster.sh, started once per session).

Every launch path trains the quickstart experiment with 2 DDP processes on a tiny Fashion-MNIST subset:
``python -m dcls_vision.launch`` (submitit), ``train.py -m hydra/launcher=slurm`` (a job array) and
``slurm/train.sbatch`` (srun + torchrun). With one thread per process the runs are deterministic, so each
is compared with the launcher run: same steps, same weights — also after a preemption mid-run (requeue +
resume). The training jobs are submitted together at module start so that they overlap on the 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.launch.jobs import submit
from dcls_vision.launch.options import LaunchError, parse_args
from dcls_vision.launch.slurm import wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=quickstart",
    "data.train_subset=512",
    "data.val_subset=256",
    "trainer.batch_size=16",
    "trainer.epochs=3",
    "+model.kwargs.dim=16",
    "+model.kwargs.depth=2",
    "logger.wandb=false",
    "logger.progress=false",
]
STEPS_PER_EPOCH = 512 // (16 * 2)
STEPS = 3 * STEPS_PER_EPOCH
TOO_BIG = "trainer.batch_size=4096"  # passes validation, fails in the job: larger than the training set
WAIT_S = 300


# ------------------------------------------------------------------------------------------------ helpers
def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = WAIT_S) -> str:
    proc.wait(timeout=timeout)
    return log.read_text()


def _sbatch(run_dir: Path, out: Path, *overrides: str, nproc: int = 2) -> str:
    env = {**os.environ, "NPROC_PER_NODE": str(nproc), "RUN_DIR": str(run_dir)}
    proc = _run(
        [
            "sbatch",
            "--parsable",
            f"--cpus-per-task={nproc}",
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


def _wait_slurm(job_id: str, timeout: float = WAIT_S) -> str:
    """Wait until the job (and any requeue of it) has left the queue; its final sacct state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if (q.returncode == 0 and not q.stdout.strip()) or "Invalid job id" in q.stderr:
            break
        time.sleep(1)
    else:
        pytest.fail(f"job {job_id} still queued after {timeout}s")
    for _ in range(20):  # slurmdbd may record the end a moment later
        state = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"]).stdout.strip().splitlines()
        if state and state[-1] not in ("RUNNING", "PENDING", "REQUEUED", ""):
            return state[-1]
        time.sleep(0.5)
    return state[-1] if state else "UNKNOWN"


def _restarts(job_id: str) -> int:
    m = re.search(r"Restarts=(\d+)", _run(["scontrol", "show", "job", job_id]).stdout)
    assert m, f"scontrol does not know job {job_id}"
    return int(m.group(1))


def _when_training(run_dir: Path, action, done: dict, key: str) -> threading.Thread:
    """In the background: once ``run dir:`` is in log.txt (all processes in the training loop), run ``action``."""

    def watch() -> None:
        log, deadline = run_dir / "log.txt", time.time() + WAIT_S
        while time.time() < deadline:
            if log.exists() and "run dir:" in log.read_text():
                action()
                done[key] = time.time()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Same steps, same final weights and metrics as the reference launch."""
    a, b = load_checkpoint(ref_dir / "last.pth"), load_checkpoint(run_dir / "last.pth")
    assert b["global_step"] == a["global_step"] == STEPS and b["next_epoch"] == 3
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5, rtol=1e-5), k
    ref, got = _metrics(ref_dir), _metrics(run_dir)
    assert [r["global_step"] for r in got] == [STEPS_PER_EPOCH * (e + 1) for e in range(3)]
    assert got[-1]["val_top1"] == pytest.approx(ref[-1]["val_top1"])
    assert got[-1]["val_loss"] == pytest.approx(ref[-1]["val_loss"], rel=1e-4)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    """Submit the uninterrupted training jobs and the failing ones at once; the tests wait for their own."""
    tmp = tmp_path_factory.mktemp("slurm_jobs")
    j: dict = {"tmp": tmp}
    j["ref_dir"] = tmp / "launch_ref"
    j["ref"] = _popen(
        [
            sys.executable,
            "-m",
            "dcls_vision.launch",
            *TINY,
            "tasks_per_node=2",
            "time=10",
            "wait=true",
            f"trainer.output_dir={j['ref_dir']}",
        ],
        tmp / "launch_ref.log",
    )
    j["sbatch_dir"] = tmp / "sbatch_run"
    j["sbatch_id"] = _sbatch(j["sbatch_dir"], tmp / "sbatch.out", *TINY)
    j["sweep_dir"] = tmp / "sweep"
    j["hydra"] = _popen(
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={j['sweep_dir']}",
            *TINY,
            "optim.lr=5e-3,4e-3",
        ],
        tmp / "hydra.log",
    )
    j["study_dir"] = tmp / "study"
    j["study"] = _popen(  # the kernel-size study's own sweep (hydra.sweeper.params), cut to 2 tasks by overrides
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=kernel_size_study",
            "hydra/launcher=slurm",
            "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={j['study_dir']}",
            "model.kwargs.dilated_kernel_size=dense,3",
            "trainer.epochs=1",
            "trainer.seed=0",
            "data.val_subset=100",
        ],
        tmp / "study.log",
    )
    j["fail_launch"] = _popen(
        [
            sys.executable,
            "-m",
            "dcls_vision.launch",
            *TINY,
            TOO_BIG,
            "time=10",
            "wait=true",
            f"trainer.output_dir={tmp / 'fail_launch'}",
        ],
        tmp / "fail_launch.log",
    )
    j["fail_hydra"] = _popen(
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={tmp / 'fail_sweep'}",
            *TINY,
            TOO_BIG,
        ],
        tmp / "fail_hydra.log",
    )
    j["fail_sbatch_id"] = _sbatch(tmp / "fail_sbatch", tmp / "fail_sbatch.out", *TINY, TOO_BIG, nproc=1)
    # preemptions mid-run: submitit's signal (SIGTERM + SIGUSR2) and a SLURM requeue (SIGTERM to every process)
    j["interrupted"] = {}
    j["pre_dir"] = tmp / "preempted"
    opts, overrides = parse_args([*TINY, "tasks_per_node=2", "time=10", f"trainer.output_dir={j['pre_dir']}"])
    j["pre"] = submit(opts, overrides)
    j["pre_watch"] = _when_training(j["pre_dir"], j["pre"].job._interrupt, j["interrupted"], "launch")
    j["req_dir"] = tmp / "requeued"
    j["req_id"] = _sbatch(j["req_dir"], tmp / "requeued.out", *TINY)
    j["req_watch"] = _when_training(
        j["req_dir"], lambda: _run(["scontrol", "requeue", j["req_id"]], check=True), j["interrupted"], "sbatch"
    )
    yield j
    for key in ("ref", "hydra", "study", "fail_launch", "fail_hydra"):
        if j[key].poll() is None:
            j[key].kill()


@pytest.fixture(scope="module")
def reference(jobs):
    """The launcher's uninterrupted run: the reference every other path is compared with."""
    out = _finish(jobs["ref"], jobs["tmp"] / "launch_ref.log")
    assert jobs["ref"].returncode == 0, out[-3000:]
    return jobs["ref_dir"], out


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_launch_module_trains_two_task_ddp(reference):
    run_dir, out = reference
    m = re.search(r"final: top1=([\d.]+) .*global_step=(\d+) run_dir=(\S+)", out)
    assert m, out[-2000:]
    assert int(m.group(2)) == STEPS and Path(m.group(3)) == run_dir
    lines = _metrics(run_dir)
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert [r["global_step"] for r in lines] == [16, 32, 48]  # 512 images / (16 per process x 2 processes)
    assert all(r["skipped_train"] == 0 and r["skipped_val"] == 0 for r in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert 10.0 < lines[-1]["val_top1"] == pytest.approx(float(m.group(1)), abs=0.01)  # above chance (10 classes)
    assert "2 process(es) on cpu" in (run_dir / "log.txt").read_text()
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["slurm"]["tasks_per_node"] == 2 and launch["run_dir"] == str(run_dir)
    assert Path(launch["stdout"]).is_file() and Path(launch["sbatch_script"]).is_file()
    assert "#SBATCH --requeue" in Path(launch["sbatch_script"]).read_text()
    command = (run_dir / "command.sh").read_text()
    assert "-m dcls_vision.launch" in command and "tasks_per_node=2" in command and "trainer.batch_size=16" in command
    assert load_checkpoint(run_dir / "last.pth")["sampler"]["world_size"] == 2


@pytest.mark.slow
def test_sbatch_template_srun_torchrun_matches_reference(jobs, reference):
    state = _wait_slurm(jobs["sbatch_id"])
    out = (jobs["tmp"] / "sbatch.out").read_text()
    assert state == "COMPLETED", out[-3000:]
    run_dir = jobs["sbatch_dir"]
    assert "1 node(s) x 2 process(es)" in out and out.count("final: top1=") == 1  # rank 0 prints
    _assert_same_run(run_dir, reference[0])
    command = (run_dir / "command.sh").read_text()
    assert "sbatch" in command and "slurm/train.sbatch" in command and "NPROC_PER_NODE=2" in command
    assert f"JobId={jobs['sbatch_id']}" in (run_dir / "slurm_job.txt").read_text()


@pytest.mark.slow
def test_hydra_launcher_sweep_is_a_job_array(jobs, reference):
    out = _finish(jobs["hydra"], jobs["tmp"] / "hydra.log")
    assert jobs["hydra"].returncode == 0, out[-3000:]
    sweep = jobs["sweep_dir"]
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1] == tasks[0][:-1] + "1", tasks  # one array
    _assert_same_run(sweep / "0_quickstart", reference[0])  # lr 5e-3 is the quickstart default
    other = load_checkpoint(sweep / "1_quickstart" / "last.pth")
    assert other["global_step"] == STEPS and other["config"]["optim"]["lr"] == pytest.approx(4e-3)
    assert "2 process(es) on cpu" in (sweep / "1_quickstart" / "log.txt").read_text()
    assert "hydra/launcher=slurm" in (sweep / "command.sh").read_text()
    assert json.loads((sweep / "launch.json").read_text())["slurm"]["tasks_per_node"] == 2


@pytest.mark.slow
def test_kernel_size_study_runs_as_one_array_and_reports(jobs):
    out = _finish(jobs["study"], jobs["tmp"] / "study.log")
    assert jobs["study"].returncode == 0, out[-3000:]
    sweep = jobs["study_dir"]
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 2 and tasks[1] == tasks[0][:-1] + "1", tasks  # one array of 2 tasks
    dense, dcls = (load_checkpoint(sweep / f"{i}_kernel_size_study" / "last.pth") for i in (0, 1))
    assert dense["config"]["model"]["kwargs"]["dilated_kernel_size"] == "dense"
    assert not any(k.endswith("positions") for k in dense["model"]) and "stages.0.conv_dw.positions" in dcls["model"]
    cmd = [sys.executable, "tools/report.py", str(sweep), "--baseline", "model.kwargs.dilated_kernel_size=dense"]
    proc = _run(cmd, check=True)
    report = json.loads((sweep / "report.json").read_text())
    assert [g["n"] for g in report["groups"]] == [1, 1] and "vs baseline" in proc.stdout


@pytest.mark.slow
def test_launch_preempted_mid_run_requeues_and_resumes(jobs, reference):
    """submitit's preemption signal (SIGTERM + SIGUSR2) mid-run: last.pth at the next step, requeue, resume,
    and the same final step and weights as the uninterrupted run."""
    run_dir, launch = jobs["pre_dir"], jobs["pre"]
    result = wait_for(launch)
    assert "launch" in jobs["interrupted"]
    assert result["global_step"] == STEPS and result["epochs_done"] == 3
    log = (run_dir / "log.txt").read_text()
    m = re.search(r"stopped by \S*SIGUSR2\S* at .*\(global step (\d+)\)", log)
    assert m and 0 < int(m.group(1)) < STEPS, log
    assert f"resumed from {run_dir / 'last.pth'}" in log
    assert _restarts(launch.job.job_id) == 1
    _assert_same_run(run_dir, reference[0])


@pytest.mark.slow
def test_sbatch_job_requeued_by_slurm_resumes(jobs, reference):
    """``scontrol requeue`` (what a preemption does): SIGTERM to every process, save, requeue, resume."""
    run_dir, job_id = jobs["req_dir"], jobs["req_id"]
    jobs["req_watch"].join(WAIT_S)
    assert "sbatch" in jobs["interrupted"]
    state = _wait_slurm(job_id)
    out = (jobs["tmp"] / "requeued.out").read_text()
    assert state == "COMPLETED", out[-3000:]
    assert _restarts(job_id) == 1
    log = (run_dir / "log.txt").read_text()
    m = re.search(r"stopped by SIGTERM at .*\(global step (\d+)\)", log)
    assert m and 0 < int(m.group(1)) < STEPS, log
    assert "resumed from" in log and "restart 1:" in out
    _assert_same_run(run_dir, reference[0])


@pytest.mark.slow
def test_failing_job_surfaces_its_error(jobs):
    expected = "trainer.batch_size=4096 (x accum=1 x world=1) is larger than the training set (512 samples)"
    out = _finish(jobs["fail_launch"], jobs["tmp"] / "fail_launch.log")
    assert jobs["fail_launch"].returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert re.match(r"JobFailed: job \d+ failed: \S*ConfigError: " + re.escape(expected), last), last
    out = _finish(jobs["fail_hydra"], jobs["tmp"] / "fail_hydra.log")
    assert jobs["fail_hydra"].returncode == 1 and "Error executing job" in out
    assert (
        out.strip()
        .splitlines()[-1]
        .endswith("ConfigError: " + expected + "; allowed: a smaller batch, accum or more data")
    ), out[-2000:]
    assert _wait_slurm(jobs["fail_sbatch_id"]) == "FAILED"
    assert "ConfigError: " + expected in (jobs["tmp"] / "fail_sbatch.out").read_text()


def test_no_sbatch_on_path_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # python by absolute path, no SLURM client
    for cmd in (
        [sys.executable, "-m", "dcls_vision.launch", "experiment=quickstart"],
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=slurm",
            "experiment=quickstart",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
    ):
        proc = _run(cmd, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            "LaunchError: sbatch not found on PATH: run this on a SLURM login node (or "
            "install slurm-client; for a local test cluster: bash slurm/local_cluster.sh "
            "start)"
        ), proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_unknown_partition_and_impossible_resources(cluster, tmp_path):
    cases = [
        ("partition=nope", r"partition='nope': Invalid partition name specified; allowed: debug$"),
        (
            "nodes=2",
            r"SLURM rejected the job: Requested node configuration is not available \(asked: nodes=2 "
            r".*the cluster has debug: 1 nodes",
        ),
        (
            "gpus_per_node=8",
            r"SLURM rejected the job: Invalid generic resource \(gres\) specification \(asked: "
            r".*gpus_per_node=8",
        ),
    ]
    for arg, pattern in cases:
        run_dir = tmp_path / arg.split("=")[0]
        opts, overrides = parse_args([*TINY, arg, f"trainer.output_dir={run_dir}"])
        with pytest.raises(LaunchError) as info:
            submit(opts, overrides)
        assert re.search(pattern, str(info.value)) and "\n" not in str(info.value), str(info.value)
        assert not run_dir.exists()  # nothing queued, nothing written
    hydra_cases = [
        ("hydra.launcher.partition=nope", "LaunchError: partition='nope': Invalid partition name"),
        ("hydra.launcher.gpus_per_node=8", "LaunchError: SLURM rejected the job: Invalid generic resource"),
    ]
    for arg, start in hydra_cases:
        sweep = tmp_path / ("sweep_" + arg.rsplit(".", 1)[1].split("=")[0])
        proc = _run([sys.executable, "train.py", "-m", "hydra/launcher=slurm", arg, *TINY, f"hydra.sweep.dir={sweep}"])
        assert proc.returncode == 2 and proc.stderr.strip().startswith(start), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not sweep.exists()


def test_bad_launcher_values_name_what_is_allowed():
    for argv, msg in [
        (["nodes=0"], "nodes='0' must be an integer >= 1"),
        (["time=soon"], "time='soon' is not a SLURM time; allowed: minutes, H:MM:SS"),
        (["time=1", "signal_delay_s=90"], "signal_delay_s=90 must be shorter than the time limit"),
        (["wait=maybe"], "wait='maybe' is not a boolean; allowed: true, false"),
    ]:
        with pytest.raises(LaunchError, match=re.escape(msg)):
            parse_args(argv)
    assert parse_args(["time=1-02:03:04"])[0].time_min == 26 * 60 + 4 and parse_args(["time=90"])[0].time_min == 90
    opts, overrides = parse_args(["gpus_per_node=8", "nodes=2", "experiment=x", "optim.lr=1e-3"])
    assert (opts.nodes, opts.ntasks_per_node, overrides) == (2, 8, ["experiment=x", "optim.lr=1e-3"])


def test_slurm_step_environment_gives_the_ddp_world(cluster, monkeypatch, tmp_path):
    from dcls_vision.engine import distributed as d

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert d._env_world() is None  # a batch script (no step) is not a 16-process world
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "11")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert d._env_world() == (11, 16, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert d._env_world() == (1, 2, 1)  # torchrun's variables win
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert d.slurm_master_port() == 20000 + 123456 % 20000
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-09],cpu1")
    assert d.slurm_master_addr() == "gpu07"  # scontrol show hostnames
    monkeypatch.setenv("PATH", str(tmp_path))
    assert d.slurm_master_addr() == "gpu07"  # no scontrol: submitit's parser


def test_preemption_guard_signal_meanings():
    """SIGUSR2 stops; SIGTERM stops unless a launcher handles it (then: save and go on); after the save the
    guard hands the stop signal to the handler that was there before, and restores every handler."""
    import signal

    from dcls_vision.engine.preemption import NONE, SAVE, STOP, PreemptionGuard

    calls = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        with PreemptionGuard() as guard:  # plain process: SIGTERM has no Python handler
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.pending() == STOP and guard.describe() == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]

        signal.signal(signal.SIGTERM, lambda s, f: calls.append(("term", s)))  # like submitit's "bypass"
        signal.signal(signal.SIGUSR2, lambda s, f: calls.append(("usr2", s)))  # like submitit's requeue
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.pending() == SAVE
            guard.saved()
            assert guard.pending() == NONE
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.pending() == STOP and calls == []  # the flag only, nothing else ran yet
            guard.hand_over()
        assert calls == [("usr2", signal.SIGUSR2)]  # the stop signal went on to the launcher; SIGTERM did not
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
