"""Spiking networks whose synapses learn a delay each (thesis ch. 4; Thvnvtos/SNN-delays ``snn_delays.py``).

One hidden layer is: synapses with delays along time (:class:`DelaySynapses`) → BatchNorm over time × batch →
LIF neurons (:func:`lif`) → dropout with one mask per sequence, shared over time. The readout is a synapse
layer into ``num_classes`` LIF neurons whose threshold is infinite; the network's output is
``Σ_t softmax(u_t)`` over classes, on which the trainer's cross-entropy applies as in the reference
(``model.py:88-102``, loss ``'sum'``). Input ``(N, T, C)`` time-major per sample, as the spike datasets give it.

``delays`` picks the synapses:

* ``learned``: ``Dcls1d`` Gauss along time, ``kernel_count`` delays per synapse, σ frozen (the trainer's
  ``trainer.sigma_schedule`` sets it each epoch); in eval mode every delay is rounded to an integer step and σ
  becomes one-hot (``rounded_kernel``): validation and test always see the rounded network, as the
  reference's ``eval_model`` (``model.py:350-355``: ``SIG *= 0``, version ``max``, ``round_pos``).
* ``fixed``: the same layer with random integer delays that never move (``snn_delays_lr0``, ``main.py:18-19`` rounds
  them once and ``snn_delays.py:150-151`` freezes ``P``).
* ``none``: no delays, one weight per synapse at every step (``snn.py``, ``layer.Linear``), no padding.
* ``dense``: the "Conv Delays" baseline: a dense causal kernel of ``max_delay`` learned taps per synapse.

Neuron state lives inside :func:`lif`: nothing to reset between batches (the reference's ``reset_net``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from dcls_vision.ops import Dcls1d

__all__ = ["DELAY_MODES", "DelaySynapses", "SpikingDelayNet", "atan_spike", "lif", "snn_param_count"]

DELAY_MODES = ("learned", "fixed", "none", "dense")
SURROGATE_ALPHA = 5.0  # best_config_SHD.py:53-54 surrogate.ATan(alpha=5.0)


class _ATanSpike(torch.autograd.Function):
    """Heaviside spike ``x >= 0`` with the arctan surrogate gradient ``α/2 / (1 + (π/2 · α · x)²)``.

    The gradient of spikingjelly's ``surrogate.ATan`` (the reference's neuron), written here so that spikingjelly
    is not a dependency.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        return grad * (alpha / 2) / (1 + (math.pi / 2 * alpha * x).square()), None


def atan_spike(x: Tensor, alpha: float = SURROGATE_ALPHA) -> Tensor:
    """Spikes ``Θ(x)`` (1 where ``x >= 0``) with the arctan surrogate gradient of sharpness ``alpha``."""
    return _ATanSpike.apply(x, alpha)


def lif(current: Tensor, tau: float, threshold: float = 1.0, alpha: float = SURROGATE_ALPHA) -> Tensor:
    """Discrete LIF over time-major input current ``(T, ...)``: spikes, or the potentials when ``threshold=inf``.

    ``u[t] = u[t-1] - u[t-1]/τ + I[t]`` (spikingjelly ``LIFNode(decay_input=False, v_reset=0)``), spike
    ``Θ(u - ϑ)``, hard reset to 0 with the spike detached from the reset (``detach_reset=True``,
    ``best_config_SHD.py:46``). ``u[-1] = 0``: the state exists only inside this call.
    """
    u = torch.zeros_like(current[0])
    out = []
    spiking = math.isfinite(threshold)
    for i_t in current:
        u = u - u / tau + i_t
        if spiking:
            s = atan_spike(u - threshold, alpha)
            u = u * (1.0 - s.detach())
            out.append(s)
        else:
            out.append(u)
    return torch.stack(out)


class DelaySynapses(nn.Module):
    """Synapses from ``in_features`` to ``out_features`` neurons along time: ``(N, C_in, T) → (N, C_out, T')``.

    With delays the input is padded causally, ``max_delay − 1`` steps on the left (kernel index ``max_delay − 1``
    is delay 0), and, as the reference does, ``(max_delay − 1) // 2`` on the right (``best_config_SHD.py:100-101``,
    ``snn_delays.py:210``), so ``T' = T + (max_delay − 1) // 2``; the output at ``t`` never sees input after ``t``.
    """

    def __init__(self, in_features: int, out_features: int, delays: str, max_delay: int, kernel_count: int = 1) -> None:
        super().__init__()
        if delays not in DELAY_MODES:
            raise ValueError(f"delays={delays!r} is not supported; allowed: {', '.join(DELAY_MODES)}")
        if delays in ("none", "dense") and kernel_count != 1:
            raise ValueError(f"kernel_count={kernel_count} with delays={delays!r}; allowed: 1 (one weight per tap)")
        self.delays, self.max_delay = delays, max_delay
        self.padding = (0, 0) if delays == "none" else (max_delay - 1, (max_delay - 1) // 2)
        if delays in ("learned", "fixed"):
            self.conv: nn.Module = Dcls1d(
                in_features, out_features, kernel_count, max_delay, padding="valid", bias=False, interpolation="gauss"
            )
        else:
            self.conv = nn.Conv1d(in_features, out_features, 1 if delays == "none" else max_delay, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform weights for ReLU (``snn_delays.py:133``); delays uniform over the kernel, clamped.

        The reference draws ``P ~ U(-max_delay//2, max_delay//2)`` with Python's floor division, i.e.
        ``U(-13, 12)`` for 25 (``best_config_SHD.py:104-105``), then clamps to ±12 (``snn_delays.py:147-148``):
        kept as is. σ starts at ``max_delay // 2`` (``best_config_SHD.py:96``, ``snn_delays.py:155-156``) and is
        never learned. Fixed delays are rounded once (``main.py:18-19``: ``model.round_pos()``) and frozen.
        """
        nn.init.kaiming_uniform_(self.conv.weight, nonlinearity="relu")
        if not isinstance(self.conv, Dcls1d):
            return
        self.conv.positions.uniform_(-self.max_delay // 2, self.max_delay // 2)
        self.conv.clamp_()
        self.conv.sigma.fill_(float(self.max_delay // 2))
        self.conv.sigma.requires_grad_(False)
        if self.delays == "fixed":
            self.conv.positions.round_()
            self.conv.positions.requires_grad_(False)

    def delay_steps(self) -> Tensor:
        """Each synapse's delay in time steps, real-valued (``(C_out, C_in, K)``): position offset ``p`` is the
        delay ``max_delay // 2 − p`` (kernel index ``max_delay − 1`` is delay 0); rounded in eval mode."""
        if not isinstance(self.conv, Dcls1d):
            raise ValueError(f"delays={self.delays!r} has no per-synapse delays; allowed: learned, fixed")
        return (self.max_delay - 1 - self.max_delay // 2) - self.conv.positions[0].detach()

    def kernel(self) -> Tensor:
        """The dense (C_out, C_in, taps) kernel of this pass: rounded for fixed delays and in eval mode."""
        if isinstance(self.conv, Dcls1d):
            if self.delays == "fixed" or not self.training:
                return self.conv.rounded_kernel()
            return self.conv.build_kernel()
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        if self.padding != (0, 0):
            x = F.pad(x, self.padding)
        return F.conv1d(x, self.kernel())


class SpikingLayer(nn.Module):
    """Delay synapses → BatchNorm over time × batch → LIF → dropout with one mask per sequence."""

    def __init__(
        self, in_features: int, out_features: int, delays: str, max_delay: int, kernel_count: int, tau: float,
        threshold: float, dropout: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.synapses = DelaySynapses(in_features, out_features, delays, max_delay, kernel_count)
        self.norm = nn.BatchNorm1d(out_features)
        self.tau, self.threshold, self.dropout = tau, threshold, dropout

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, T) → (N, C_out, T')`` spikes."""
        # BatchNorm1d on (N, C, T) normalises over N and T per channel: the reference's BN on (T·N, C) rows
        current = self.norm(self.synapses(x))
        spikes = lif(current.permute(2, 0, 1), self.tau, self.threshold).permute(1, 2, 0)
        if self.training and self.dropout > 0:  # spikingjelly layer.Dropout(step_mode='m'): one mask over time
            mask = F.dropout(torch.ones_like(spikes[..., 0]), self.dropout, training=True)
            spikes = spikes * mask.unsqueeze(-1)
        return spikes


class SpikingDelayNet(nn.Module):
    """``layers`` hidden spiking layers of ``hidden_size`` neurons and an integrating readout (module docstring)."""

    def __init__(
        self,
        num_classes: int = 20,
        in_chans: int = 140,
        hidden_size: int = 256,
        layers: int = 2,
        delays: str = "learned",
        max_delay: int = 25,
        kernel_count: int = 1,
        tau: float = 1.005,
        threshold: float = 1.0,
        dropout: float = 0.4,
        **kwargs: object,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for SpikingDelayNet: {', '.join(sorted(kwargs))}")
        _check_sizes(num_classes, in_chans, hidden_size, layers, max_delay, tau, dropout)
        self.num_classes, self.in_chans, self.delays = num_classes, in_chans, delays
        self.num_features = self.head_hidden_size = hidden_size
        self.max_delay, self.kernel_count, self.tau = max_delay, kernel_count, tau
        widths = [in_chans] + [hidden_size] * layers
        self.blocks = nn.ModuleList(
            SpikingLayer(a, b, delays, max_delay, kernel_count, tau, threshold, dropout)
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.head = DelaySynapses(hidden_size, num_classes, delays, max_delay, kernel_count)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = DelaySynapses(self.num_features, num_classes, self.delays, self.max_delay, self.kernel_count)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Delays have no weight decay (``model.py:46``); the trainer's DCLS rule also says so."""
        return {n for n, _ in self.named_parameters() if n.endswith((".positions", ".sigma"))}

    def forward_features(self, x: Tensor) -> Tensor:
        """Hidden spikes ``(N, hidden, T')`` of the last layer from input ``(N, T, C)``."""
        if x.dim() != 3 or x.shape[-1] != self.in_chans:
            raise ValueError(
                f"input shape {tuple(x.shape)} is not supported; allowed: (N, T, {self.in_chans}) time-major spikes"
            )
        x = x.transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return x

    def readout_potentials(self, features: Tensor) -> Tensor:
        """Readout membrane potentials ``(T', N, classes)``: LIF with an infinite threshold (``snn_delays.py:91``)."""
        return lif(self.head(features).permute(2, 0, 1), self.tau, math.inf)

    def forward_head(self, x: Tensor) -> Tensor:
        """``Σ_t softmax(u_t)`` over the readout potentials, per class (``model.py:93-95``, loss ``'sum'``)."""
        return self.readout_potentials(x).softmax(-1).sum(0)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_sizes(
    num_classes: int, in_chans: int, hidden: int, layers: int, max_delay: int, tau: float, dropout: float
) -> None:
    """One clear line for a size the network cannot have."""
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("hidden_size", hidden)):
        if value < 1:
            raise ValueError(f"{name}={value} is invalid; allowed: integers >= 1")
    if layers < 1:
        raise ValueError(f"layers={layers} is invalid; allowed: integers >= 1 (hidden spiking layers)")
    if max_delay < 1:
        raise ValueError(f"max_delay={max_delay} is invalid; allowed: integers >= 1 (time steps)")
    if tau < 1:
        raise ValueError(f"tau={tau} is invalid; allowed: >= 1 time step (best_config_*.py: can't be < time_step)")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} is invalid; allowed: [0, 1)")


def snn_param_count(
    in_chans: int, hidden_size: int, layers: int, num_classes: int, delays: str = "learned", kernel_count: int = 1,
    max_delay: int = 1,
) -> int:  # fmt: skip
    """Learned parameters in closed form: synapse weights (+ as many delays when learned) + BatchNorm affine.

    Thesis Table 4.2 counts: SHD 2L-1KC (140→256→256→20) 214,016; the frozen σ is not counted.
    """
    synapses = in_chans * hidden_size + (layers - 1) * hidden_size**2 + hidden_size * num_classes
    per_synapse = {"learned": 2 * kernel_count, "fixed": kernel_count, "none": 1, "dense": max_delay}[delays]
    return synapses * per_synapse + 2 * hidden_size * layers


def _cfg(num_classes: int, in_chans: int) -> dict[str, object]:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (1, 1, in_chans),  # (N, T, C) spike sequences of any length T
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "nearest",
        "mean": (0.0,),
        "std": (1.0,),
        "first_conv": "blocks.0.synapses.conv",
        "classifier": "head",
    }


@register_model
def snn_delays(pretrained: bool = False, **kwargs: Any) -> SpikingDelayNet:
    """Spiking net with learnable synaptic delays (DCLS-1D along time); ``delays=learned|fixed|none|dense``."""
    if pretrained:
        raise ValueError("snn_delays: no pretrained weights exist; create it with pretrained=False and train it")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "drop_path_rate"):  # timm.create_model's
        kwargs.pop(key, None)
    model = SpikingDelayNet(**kwargs)
    model.pretrained_cfg = model.default_cfg = _cfg(model.num_classes, model.in_chans)
    return model
