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
    [("fixed", 256, 107_520), ("none", 388, 214_176), ("dense", 256, 2_663_424), ("none", 107, 28_997)],
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
