"""Spiking networks with learnable delays (thesis ch. 4, Thvnvtos/SNN-delays): the neuron, the delay synapses, the
parameter counts of Table 4.2, the trainer's σ schedule and separate delay optimizer, and a run that learns."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import dcls_vision.models  # noqa: F401  (registers snn_delays)
from dcls_vision.models.snn import DelaySynapses, SpikingDelayNet, atan_spike, lif, snn_param_count


def _learned(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- neuron
def test_lif_step_matches_a_hand_computed_trace():
    current = torch.tensor([0.6, 0.6, 0.6, 0.0, 1.5]).view(5, 1)
    # tau 2: u <- u - u/2 + I; spike when u >= 1, then u = 0
    # u: 0.6, 0.9, 1.05 (spike, reset), 0.0, 1.5 (spike)
    assert lif(current, tau=2.0).flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    # infinite threshold (the readout): never resets
    potentials = lif(current, tau=2.0, threshold=math.inf).flatten()
    assert torch.allclose(potentials, torch.tensor([0.6, 0.9, 1.05, 0.525, 1.7625]))


def test_arctan_surrogate_gradient():
    x = torch.tensor([-0.4, 0.0, 0.1, 2.0], requires_grad=True)
    spikes = atan_spike(x, alpha=5.0)
    assert spikes.tolist() == [0.0, 1.0, 1.0, 1.0]
    spikes.sum().backward()
    expected = 2.5 / (1 + (math.pi / 2 * 5.0 * x.detach()) ** 2)
    assert torch.allclose(x.grad, expected) and x.grad[1] == 2.5


def test_reset_is_detached_from_the_gradient():
    """detach_reset=True: d u[t+1] / d u[t] is (1 - 1/τ)(1 - s[t]) with s[t] held constant."""
    current = torch.tensor([[1.2], [0.3]], requires_grad=True)
    s = lif(current, tau=2.0)
    s[1].sum().backward()  # u1 = (u0 - u0/2)(1 - s0) + I1 with s0 = 1 detached: no path through u0
    assert current.grad[0].item() == 0.0 and current.grad[1].item() > 0


# --------------------------------------------------------------------------------------------- synapses
def _spiking_input(n: int = 2, steps: int = 40, chans: int = 140, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, steps, chans), 0.8), generator=g)


@pytest.mark.parametrize("mode", ["learned", "fixed", "dense", "none"])
def test_network_is_causal(mode):
    """Perturbing the input at step t changes no hidden spike nor readout potential before t (eval: BN fixed)."""
    torch.manual_seed(0)
    model = SpikingDelayNet(num_classes=5, in_chans=140, hidden_size=32, layers=2, delays=mode, max_delay=9).eval()
    x = _spiking_input()
    t0 = 17
    y = x.clone()
    y[:, t0] += 3.0
    with torch.no_grad():
        fx, fy = model.forward_features(x), model.forward_features(y)
        ux, uy = model.readout_potentials(fx), model.readout_potentials(fy)
    assert fx.sum() > 0  # the layer spikes: the comparison is not between two silent nets
    assert torch.equal(fx[..., :t0], fy[..., :t0]) and torch.equal(ux[:t0], uy[:t0])
    assert not torch.equal(ux[t0:], uy[t0:])


def test_learned_synapses_are_causal_while_training():
    """The Gaussian (unrounded) kernel too: its support is inside the T_d taps that the left padding makes causal."""
    torch.manual_seed(0)
    syn = DelaySynapses(4, 3, "learned", max_delay=11).train()
    x = torch.randn(2, 4, 30)
    y = x.clone()
    y[..., 20] += 1.0
    out_x, out_y = syn(x), syn(y)
    assert out_x.shape == (2, 3, 30 + 5)  # right padding (T_d - 1) // 2, as the reference
    assert torch.equal(out_x[..., :20], out_y[..., :20]) and not torch.equal(out_x[..., 20:], out_y[..., 20:])


@pytest.mark.parametrize("position,delay", [(3.4, 9), (-2.6, 15), (12.0, 0), (-12.0, 24), (0.0, 12)])
def test_impulse_comes_out_delayed_by_the_rounded_delay(position, delay):
    syn = DelaySynapses(1, 1, "learned", max_delay=25)
    with torch.no_grad():
        syn.conv.weight.fill_(0.7)
        syn.conv.positions.fill_(position)
    syn.eval()
    x = torch.zeros(1, 1, 40)
    x[..., 5] = 1.0
    out = syn(x).flatten()
    assert out.nonzero().flatten().tolist() == [5 + delay]
    assert out[5 + delay].item() == pytest.approx(0.7)
    assert syn.delay_steps().round().item() == delay


def test_training_spreads_the_delay_with_sigma_and_eval_rounds_it():
    syn = DelaySynapses(1, 1, "learned", max_delay=25)
    with torch.no_grad():
        syn.conv.weight.fill_(1.0)
        syn.conv.positions.fill_(3.4)
        syn.conv.sigma.fill_(2.0)
    x = torch.zeros(1, 1, 40)
    x[..., 5] = 1.0
    train_out = syn.train()(x).flatten()
    assert (train_out > 1e-3).sum() > 5 and train_out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert syn.eval()(x).flatten().nonzero().flatten().tolist() == [14]


def test_fixed_delays_are_integer_and_frozen():
    torch.manual_seed(0)
    syn = DelaySynapses(8, 4, "fixed", max_delay=25)
    p = syn.conv.positions
    assert not p.requires_grad and not syn.conv.sigma.requires_grad
    assert torch.equal(p, p.round()) and p.min() >= -12 and p.max() <= 12
    assert torch.equal(syn.train().kernel(), syn.eval().kernel())  # one-hot in training too


def test_initialisation_follows_the_reference():
    """kaiming-uniform for ReLU; delays U(-13, 12) clamped to ±12 (Python's -25//2); σ = 25 // 2, frozen."""
    torch.manual_seed(0)
    syn = DelaySynapses(140, 256, "learned", max_delay=25)
    bound = math.sqrt(6 / 140)
    assert syn.conv.weight.abs().max() <= bound and syn.conv.weight.abs().max() > 0.95 * bound
    p = syn.conv.positions
    assert p.min() == -12 and p.max() <= 12 and (p == -12).float().mean() > 0.02  # the clamped share of U(-13, -12)
    assert torch.all(syn.conv.sigma == 12.0) and not syn.conv.sigma.requires_grad


def test_gauss_kernel_equals_the_dcls_package():
    """The 1-D Gauss delay kernel at the SNN setting (T_d 25, σ from 12 down to 0.23) equals ``dcls`` 0.1.1's."""
    modules = pytest.importorskip("DCLS.construct.modules")
    torch.manual_seed(0)
    ours = DelaySynapses(6, 5, "learned", max_delay=25, kernel_count=2).train()
    theirs = modules.Dcls1d(6, 5, kernel_count=2, dilated_kernel_size=25, bias=False, version="gauss")
    x = torch.randn(3, 6, 50)
    for sigma in (12.0, 3.1, 0.23):
        with torch.no_grad():
            ours.conv.sigma.fill_(sigma)
            theirs.weight.copy_(ours.conv.weight)
            theirs.P.copy_(ours.conv.positions)
            theirs.SIG.fill_(sigma)
        kernel = theirs.DCK(theirs.weight, theirs.P, theirs.SIG)
        assert torch.allclose(ours.kernel(), kernel, atol=1e-6), sigma
        assert torch.allclose(ours(x), theirs(torch.nn.functional.pad(x, ours.padding)), atol=1e-5), sigma


# ---------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "classes,hidden,layers,count,max_delay,expected",
    [
        (20, 256, 2, 1, 25, 214_016),  # SHD 2L-1KC
        (35, 512, 2, 1, 31, 705_536),  # SSC 2L-1KC
        (35, 512, 3, 1, 31, 1_230_848),  # SSC 3L-1KC
        (35, 512, 3, 2, 31, 2_458_624),  # SSC / GSC 3L-2KC
    ],
)
def test_parameter_counts_of_table_4_2(classes, hidden, layers, count, max_delay, expected):
    model = timm.create_model(
        "snn_delays", num_classes=classes, in_chans=140, hidden_size=hidden, layers=layers, kernel_count=count,
        max_delay=max_delay,
    )  # fmt: skip
    assert _learned(model) == expected == snn_param_count(140, hidden, layers, classes, "learned", count)


@pytest.mark.parametrize(
    "mode,hidden,expected",
    [
        ("fixed", 256, 107_520),
        ("none", 388, 214_176),
        ("dense", 256, 2_663_424),
        ("learned", 64, 28_928),  # snn_quickstart
        ("none", 107, 28_997),  # snn_quickstart_baseline: equal parameters
    ],
)
def test_ablation_parameter_counts(mode, hidden, expected):
    model = timm.create_model("snn_delays", num_classes=20, in_chans=140, hidden_size=hidden, delays=mode)
    assert _learned(model) == expected == snn_param_count(140, hidden, 2, 20, mode, max_delay=25)


def test_bad_arguments_are_one_clear_line():
    with pytest.raises(ValueError, match="delays='late' is not supported; allowed: learned, fixed, none, dense"):
        SpikingDelayNet(delays="late")
    with pytest.raises(ValueError, match="tau=0.5 is invalid"):
        SpikingDelayNet(tau=0.5)
    with pytest.raises(ValueError, match=r"input shape \(2, 140\) is not supported; allowed: \(N, T, 140\)"):
        SpikingDelayNet()(torch.zeros(2, 140))
    with pytest.raises(ValueError, match="kernel_count=2 with delays='none'"):
        SpikingDelayNet(delays="none", kernel_count=2)


def test_output_is_the_sum_over_time_of_softmaxed_potentials():
    torch.manual_seed(0)
    model = SpikingDelayNet(num_classes=4, in_chans=140, hidden_size=16, max_delay=5).eval()
    x = _spiking_input(steps=20)
    out = model(x)
    steps = 20 + 3 * 2  # two hidden layers and the readout each add (T_d - 1) // 2 steps
    assert out.shape == (2, 4) and torch.allclose(out.sum(1), torch.full((2,), float(steps)))


def test_dropout_mask_is_shared_over_time():
    """Each (sample, neuron) is either dropped at every step or kept at every step (scaled by 1 / (1 - p))."""
    torch.manual_seed(0)
    layer = SpikingDelayNet(num_classes=4, in_chans=140, hidden_size=64, layers=1, max_delay=5, dropout=0.5).blocks[0]
    x = torch.poisson(torch.full((8, 140, 30), 2.0))
    with torch.no_grad():
        dropped = layer(x)
        layer.dropout = 0.0
        full = layer(x)  # BN in training mode: same batch statistics, so the same spikes before dropout
    active = full.sum(-1) > 0
    kept = torch.all(dropped == 2 * full, dim=-1)
    gone = torch.all(dropped == 0, dim=-1)
    assert torch.all(kept | gone) and active.sum() > 100
    assert 0.3 < (gone & active).sum() / active.sum() < 0.7


# ------------------------------------------------------------------------------------------- σ schedule
def test_sigma_schedule_reaches_0_5_effective_at_a_quarter_of_the_epochs():
    from dcls_vision.engine.snn import sigma_at

    epochs, final = 150, 150 // 4
    values = [sigma_at(e, epochs, 12.0, 0.23, 0.25) for e in range(epochs)]
    assert values[0] == 12.0 and values[final] == pytest.approx(0.23) and 0.23 + 0.27 == pytest.approx(0.5)
    assert all(a > b for a, b in zip(values[:final], values[1 : final + 1]))  # decays every epoch until then
    assert values[final:] == [values[final]] * (epochs - final)  # then stays
    # the reference multiplies SIG (float32) by alpha after each epoch < final_epoch (snn_delays.py:183-199)
    sig, alpha = torch.tensor(12.0), (0.23 / 12) ** (1 / final)
    for e in range(epochs):
        assert values[e] == pytest.approx(sig.item(), rel=1e-5), e
        if e < final and sig > 0.23:
            sig *= alpha
    assert sigma_at(5, 10, 12.0, 0.23, 0.0) == 0.23  # until 0: constant σ (best_config_SHD.py:95)


# --------------------------------------------------------------------------------------- trainer runs
def _write_delay_task(root, n_per_class: int, seed: int) -> None:
    """SHD-layout files of a 4-class task that only delays can solve: units 0-99 fire a burst and units 100-199
    another; the class is the gap between the two bursts (-80, -30, 30, 80 ms). Every sample has the same frames
    in another order, so a memoryless net (τ ≈ 1 step) without delays sees the same Σ_t and stays at chance."""
    import h5py
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    gaps = (-0.08, -0.03, 0.03, 0.08)
    for split, n in (("train", n_per_class), ("test", n_per_class // 2)):
        rng = np.random.default_rng([seed, split == "test"])
        times, units, labels = [], [], []
        for i in range(n * len(gaps)):
            label = i % len(gaps)
            start = 0.1 + rng.uniform(0, 0.05)
            a, b = (start, start + gaps[label]) if gaps[label] > 0 else (start - gaps[label], start)
            ua, ub = rng.integers(0, 100, 60), rng.integers(100, 200, 60)
            t = np.concatenate([a + rng.uniform(0, 0.01, 60), b + rng.uniform(0, 0.01, 60)])
            order = np.argsort(t)
            times.append(t[order].astype(np.float32))
            units.append(np.concatenate([ua, ub])[order].astype(np.uint16))
            labels.append(label)
        with h5py.File(root / f"shd_{split}.h5", "w") as f:
            for name, arrays, dtype in (("spikes/times", times, np.float32), ("spikes/units", units, np.uint16)):
                ds = f.create_dataset(name, (len(arrays),), dtype=h5py.vlen_dtype(dtype))
                for j, arr in enumerate(arrays):
                    ds[j] = arr
            f["labels"] = np.array(labels, dtype=np.uint16)


@pytest.fixture(scope="module")
def delay_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("delay_task")
    _write_delay_task(root, n_per_class=64, seed=0)
    return root


def _snn_cfg(data_root, run_dir, *overrides: str):
    from hydra import compose, initialize_config_dir

    from dcls_vision.engine import register_configs

    register_configs()
    config_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "experiment=snn_quickstart",
                f"data.root={data_root}",
                "data.embedded=false",
                "data.num_steps=30",
                "model.kwargs.hidden_size=24",
                "model.kwargs.max_delay=11",
                "model.kwargs.dropout=0.0",
                "trainer.batch_size=16",
                "trainer.epochs=6",
                "trainer.device=cpu",
                "logger.wandb=false",
                "logger.progress=false",
                f"trainer.output_dir={run_dir}",
                *overrides,
            ],
        )


def test_learned_delays_solve_a_timing_task_that_no_delays_cannot(delay_task, tmp_path):
    from dcls_vision.engine import train

    learned = train(_snn_cfg(delay_task, tmp_path / "learned"))
    flat = train(
        _snn_cfg(
            delay_task,
            tmp_path / "none",
            "model=snn_quickstart_baseline",
            "model.kwargs.hidden_size=24",
            "model.kwargs.dropout=0.0",
            "optim.positions=null",
            "trainer.sigma_schedule.enabled=false",
        )  # fmt: skip
    )
    assert learned["top1"] >= 75.0, learned  # chance: 25 %
    assert flat["top1"] <= 40.0, flat


def test_sigma_and_delay_optimizer_survive_a_resume(delay_task, tmp_path):
    """Epochs 0-3 in one go vs four invocations of one epoch each: same σ per epoch, same optimizer/scheduler
    state (weights' one-cycle incl. Adam β1, delays' cosine) and the same weights at the end."""
    from dcls_vision.engine import train
    from dcls_vision.engine.checkpoint import load_checkpoint
    from dcls_vision.engine.snn import sigma_at

    over = ["trainer.epochs=4", "trainer.keep_last=4"]
    train(_snn_cfg(delay_task, tmp_path / "straight", *over))
    for _ in range(4):
        train(_snn_cfg(delay_task, tmp_path / "resumed", *over, "trainer.max_epochs_per_run=1"))
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "resumed" / "last.pth")
    for epoch in range(4):  # σ held by the epoch's checkpoint = σ of that epoch (4 epochs: 0.23 from epoch 1)
        state = load_checkpoint(tmp_path / "resumed" / f"epoch_{epoch:04d}.pth")["model"]
        assert state["blocks.0.synapses.conv.sigma"].unique().item() == pytest.approx(sigma_at(epoch, 4, 5, 0.23, 0.25))
    opt_a, opt_b = a["optimizer"]["grouped"], b["optimizer"]["grouped"]
    assert set(opt_a) == {"weights", "positions"}
    for name in opt_a:
        for ga, gb in zip(opt_a[name]["param_groups"], opt_b[name]["param_groups"], strict=True):
            assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}
    weights_groups = opt_a["weights"]["param_groups"]
    assert weights_groups[0]["betas"][0] != 0.9  # one-cycle cycles Adam's beta1 (0.95 -> 0.85 -> 0.95)
    assert opt_a["positions"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 4)))
    assert a["scheduler"] == b["scheduler"]
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key


@pytest.fixture(scope="module")
def short_run(delay_task, tmp_path_factory):
    """Two epochs of learned delays on the timing task: (config, run dir)."""
    from dcls_vision.engine import train

    run_dir = tmp_path_factory.mktemp("short_run")
    cfg = _snn_cfg(delay_task, run_dir, "trainer.epochs=2")
    train(cfg)
    return cfg, run_dir


def test_validation_uses_the_rounded_network(short_run):
    """best.pth's recorded val accuracy is that of the network with every delay rounded (plain Conv1d export)."""
    import copy

    from dcls_vision.data import build_datasets
    from dcls_vision.engine.checkpoint import load_checkpoint
    from dcls_vision.ops import convert_to_conv

    cfg, run_dir = short_run
    best = load_checkpoint(run_dir / "best.pth")
    model = timm.create_model("snn_delays", num_classes=20, in_chans=140, **dict(cfg.model.kwargs))
    model.load_state_dict(best["model"])
    rounded = convert_to_conv(copy.deepcopy(model), rounded=True).eval()
    _, val, _ = build_datasets(cfg.data, cfg.aug)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        acc = (rounded(x).argmax(1) == y).float().mean().item() * 100
        loss_rounded = torch.nn.functional.cross_entropy(rounded(x), y).item()
        model.train()
        for m in model.modules():  # the Gaussian kernels with the same (running) BN statistics
            if isinstance(m, torch.nn.BatchNorm1d):
                m.eval()
        loss_gauss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert best["metrics"]["top1"] == pytest.approx(acc)
    assert best["metrics"]["loss"] == pytest.approx(loss_rounded, rel=1e-4)
    assert loss_gauss != pytest.approx(loss_rounded, rel=1e-4)  # the check can tell the two networks apart


def test_delay_histograms_before_and_after_training(short_run, tmp_path):
    """tools/plot_positions.py --delays: the initialisation is rebuilt from the run's config and seed."""
    import importlib.util
    from pathlib import Path

    from dcls_vision.engine.train_setup import seed_everything

    cfg, run_dir = short_run
    spec = importlib.util.spec_from_file_location(
        "plot_positions", Path(__file__).parents[1] / "tools/plot_positions.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.main(["--checkpoint", str(run_dir / "last.pth"), "--delays", "--out", str(tmp_path)])
    before, after = result["delays"]["before"], result["delays"]["after"]
    assert [h["name"] for h in after] == ["blocks.0.synapses", "blocks.1.synapses", "head"]
    assert [sum(h["counts"]) for h in after] == [140 * 24, 24 * 24, 24 * 20] == [sum(h["counts"]) for h in before]
    seed_everything(int(cfg.trainer.seed))
    fresh = timm.create_model("snn_delays", num_classes=20, in_chans=140, **dict(cfg.model.kwargs))
    delays = fresh.blocks[0].synapses.delay_steps().flatten()
    edges = torch.tensor(before[0]["edges"])
    assert before[0]["counts"] == torch.histogram(delays, edges).hist.long().tolist()
    assert before[0]["counts"] != after[0]["counts"]  # trained delays moved
    assert (tmp_path / "delays_hist.png").stat().st_size > 10_000


def test_snn_config_rules_are_one_line(tmp_path):
    from dcls_vision.engine import ConfigError, validate_config

    for bad, line in (
        ("trainer.ema.enabled=true", "trainer.ema.enabled=True with model.name=snn_delays; allowed: off"),
        ("aug.mixup=0.2", "aug.mixup=0.2 with model.name=snn_delays; allowed: off"),
        ("trainer.amp=bf16", "trainer.amp='bf16' with model.name=snn_delays; allowed: off"),
        ("trainer.sigma_schedule.until=2", "trainer.sigma_schedule.until=2.0 must be in [0, 1]"),
        ("sched.warmup_epochs=2", "sched.warmup_epochs=2 must be 0 with sched.name=onecycle"),
        ("optim.positions.sched=linear", "optim.positions.sched='linear' is not supported"),
    ):
        with pytest.raises(ConfigError, match=line.replace("(", r"\(").replace("[", r"\[")):
            validate_config(_snn_cfg(tmp_path, tmp_path / "x", bad))


def test_weights_one_cycle_and_delays_cosine_match_torch_schedulers_per_epoch(tmp_path):
    """The recipe's two schedules, epoch by epoch, against the reference's torch schedulers (model.py:63-77)."""
    from dcls_vision.engine import builders
    from dcls_vision.engine.grouped import GroupedOptimizer

    cfg = _snn_cfg(tmp_path, tmp_path / "x", "trainer.epochs=12")
    model = timm.create_model("snn_delays", num_classes=20, in_chans=140, **dict(cfg.model.kwargs))
    opt = builders.build_optimizer(cfg, model, global_batch=16)
    sched = builders.build_scheduler(cfg, opt, epochs=12, updates_per_epoch=5)
    assert isinstance(opt, GroupedOptimizer) and [g["name"] for g in opt.param_groups] == [
        "decay",
        "no_decay",
        "positions",
    ]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0, 0.0]
    ref_w = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref_p = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(ref_w, max_lr=5e-3, total_steps=12)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(ref_p, T_max=12)
    for epoch in range(12):
        weights, positions = opt.optimizers["weights"].param_groups[0], opt.optimizers["positions"].param_groups[0]
        assert weights["lr"] == pytest.approx(ref_w.param_groups[0]["lr"]), epoch
        assert weights["betas"] == pytest.approx(ref_w.param_groups[0]["betas"]), epoch
        assert positions["lr"] == pytest.approx(ref_p.param_groups[0]["lr"], abs=1e-12), epoch
        for update in range(5):
            sched.step_update(epoch * 5 + update + 1)  # per update: nothing moves (both step per epoch)
        ref_w.step(), ref_p.step(), one_cycle.step(), cosine.step()
        opt.step()  # no gradients: moves nothing, but torch wants a step before its scheduler's
        sched.step(epoch + 1)
    state = sched.state_dict()
    assert set(state) == {"weights", "positions"}
    with pytest.raises(ValueError, match="this run has optimizers"):
        opt.load_state_dict(opt.optimizers["weights"].state_dict())


def test_denormals_are_flushed_only_inside_the_block():
    from dcls_vision.engine.snn import flushed_denormals

    tiny = torch.tensor([1e-39])  # below float32's smallest normal (1.2e-38): a denormal
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    assert (tiny * 1.0).item() != 0.0
    with flushed_denormals(True):
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0  # the default is back
    with flushed_denormals(False):
        assert (tiny * 1.0).item() != 0.0


def test_bench_snn_prints_one_row_per_sigma_and_flush_setting(capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_snn", Path(__file__).parents[1] / "tools/bench_snn.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--hidden", "8", "--batch", "2", "--steps", "10", "--repeats", "1", "--max-delay", "5"])
    result = json.loads(capsys.readouterr().out)
    rows = [(r["sigma"], r["flush_denormal"]) for r in result["results"]]
    assert rows == [(2.0, False), (2.0, True), (0.23, False), (0.23, True)]
    assert all(r["train_s_per_step"] > 0 and r["eval_s_per_step"] > 0 for r in result["results"])


def _recipe(name: str):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from dcls_vision.engine import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", "data.root=/nonexistent"])


@pytest.mark.parametrize(
    "name,sizes,epochs,batch",
    [
        # best_config_SHD.py: 2 x 256, tau 10.05 ms, 250 ms // 10 ms = 25, dropout 0.4, 150 epochs, batch 256
        ("shd_snn_delays", (2, 256, 25, 1.005, 0.4, 1), 150, 256),
        # best_config_SSC.py: 3 x 512, 15 ms, 300 // 10 = 30 -> 31 (odd), 0.25, 60 epochs, batch 128
        ("ssc_snn_delays", (3, 512, 31, 1.5, 0.25, 1), 60, 128),
        ("ssc_snn_delays_2l_1kc", (2, 512, 31, 1.5, 0.25, 1), 60, 128),
        ("ssc_snn_delays_2l_2kc", (2, 512, 31, 1.5, 0.25, 2), 60, 128),
        ("ssc_snn_delays_3l_2kc", (3, 512, 31, 1.5, 0.25, 2), 60, 128),
        ("gsc_snn_delays", (3, 512, 31, 1.5, 0.25, 1), 100, 128),  # best_config_GSC.py: as SSC, 100 epochs
    ],
)
def test_recipes_carry_the_best_config_values(name, sizes, epochs, batch):
    cfg = _recipe(name)
    k = cfg.model.kwargs
    assert (k.layers, k.hidden_size, k.max_delay, k.tau, k.dropout, k.kernel_count) == sizes
    assert (k.delays, cfg.trainer.epochs, cfg.trainer.batch_size) == ("learned", epochs, batch)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 5e-3, 1e-5)
    assert (cfg.sched.name, cfg.sched.step_on_epochs, cfg.sched.warmup_epochs) == ("onecycle", True, 0)
    pos = cfg.optim.positions
    assert (pos.name, pos.lr, pos.weight_decay, pos.sched, pos.min_lr, pos.step_on_epochs) == (
        "adam", 0.1, 0.0, "cosine", 0.0, True,
    )  # fmt: skip
    sig = cfg.trainer.sigma_schedule
    assert (sig.enabled, sig.start, sig.end, sig.until) == (True, None, 0.23, 0.25)
    assert (cfg.trainer.ema.enabled, cfg.aug.mixup, cfg.aug.label_smoothing, cfg.trainer.flush_denormal) == (
        False, 0.0, 0.0, True,
    )  # fmt: skip
    assert cfg.data.format == name.split("_")[0]


def test_ablations_change_one_thing_each():
    base = _recipe("shd_snn_delays")
    for name, delays, hidden, positions, sigma in (
        ("shd_snn_fixed_delays", "fixed", 256, False, False),
        ("shd_snn_no_delays", "none", 388, False, False),
        ("shd_snn_conv_delays", "dense", 256, False, False),
        ("shd_snn_constant_sigma", "learned", 256, True, True),
    ):
        cfg = _recipe(name)
        assert (cfg.model.kwargs.delays, cfg.model.kwargs.hidden_size) == (delays, hidden), name
        assert (cfg.optim.positions is not None, cfg.trainer.sigma_schedule.enabled) == (positions, sigma), name
        assert (cfg.trainer.epochs, cfg.optim.lr, cfg.model.kwargs.tau) == (150, 5e-3, 1.005)
    constant = _recipe("shd_snn_constant_sigma").trainer.sigma_schedule
    assert (constant.until, constant.end) == (0.0, 0.23) and base.trainer.sigma_schedule.until == 0.25
    qs, qb = _recipe("snn_quickstart"), _recipe("snn_quickstart_baseline")
    assert (qs.trainer.epochs, qs.trainer.batch_size, qs.data.embedded) == (15, 32, True)
    assert {k: v for k, v in qb.trainer.items() if k not in ("sigma_schedule", "output_dir")} == {
        k: v for k, v in qs.trainer.items() if k not in ("sigma_schedule", "output_dir")
    }
