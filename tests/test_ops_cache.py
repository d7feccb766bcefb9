"""The eval-mode kernel cache: every in-place change of a DCLS parameter must reach the next forward.

Each test caches the kernel (eval, no_grad forward), changes a parameter in a way that does or does not
bump its version counter / keep its storage, and compares the next forward with a freshly built kernel.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from dcls_vision.ops import Dcls2d, Dcls3_1d


def _layer(interpolation: str = "gauss") -> Dcls2d:
    torch.manual_seed(0)
    return Dcls2d(4, 4, 5, 7, groups=4, interpolation=interpolation).eval()


def _fresh(layer, x: torch.Tensor) -> torch.Tensor:
    """The output with a kernel built now, from the parameters' current values (no cache involved)."""
    with torch.no_grad():
        return layer._conv(x, layer.build_kernel())


def _eval_grad_step(layer, x: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    """An optimizer step taken while the layer stays in eval mode (e.g. fine-tuning with frozen norms)."""
    opt.zero_grad()
    layer(x).square().sum().backward()
    opt.step()


def _assert_current(layer, x: torch.Tensor, before: torch.Tensor) -> None:
    with torch.no_grad():
        y = layer(x)
    expected = _fresh(layer, x)
    assert not torch.allclose(expected, before), "the change should alter the output"
    error = (y - expected).abs().max().item()
    assert error < 1e-5, f"eval forward used a stale kernel: max error {error:.3g}"


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, torch.optim.SGD, torch.optim.Adam])
def test_fused_optimizer_step_invalidates(opt_cls):
    layer, x = _layer(), torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        before = layer(x)
    _eval_grad_step(layer, x, opt_cls(layer.parameters(), lr=0.1, fused=True))
    _assert_current(layer, x, before)


def test_write_through_data_invalidates():
    layer, x = _layer(), torch.randn(2, 4, 9, 9)
    for param, change in ((layer.weight, 1.0), (layer.positions, 0.5), (layer.sigma, 0.3)):
        with torch.no_grad():
            before = layer(x)
        param.data.add_(change)
        _assert_current(layer, x, before)


def test_vector_to_parameters_reused_buffer_invalidates():
    layer, x = _layer(), torch.randn(2, 4, 9, 9)
    vec = parameters_to_vector(layer.parameters())
    vector_to_parameters(vec, layer.parameters())  # parameters now view vec's storage
    with torch.no_grad():
        before = layer(x)
        vec.add_(0.3)  # e.g. a flat-vector update (natural gradient, EMA)
    vector_to_parameters(vec, layer.parameters())  # same buffer again: same data pointers
    _assert_current(layer, x, before)


def test_no_grad_copy_invalidates():
    layer, x = _layer(), torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        before = layer(x)
        layer.positions.copy_(torch.rand_like(layer.positions) * 6 - 3)
    _assert_current(layer, x, before)


def test_inference_mode_then_data_write():
    layer, x = _layer("triangle"), torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        before = layer(x)
    layer.weight.data.mul_(3.0)
    with torch.inference_mode():
        y = layer(x)
    assert not torch.allclose(y, before) and torch.allclose(y, _fresh(layer, x), atol=1e-6)


def test_shared_positions_changed_through_other_layer_data():
    a, b = _layer(), _layer()
    b.positions = a.positions
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        before = b(x)
    a.positions.data.add_(0.5)
    _assert_current(b, x, before)


def test_cache_still_hits_and_dtype_change_rebuilds(monkeypatch):
    layer = Dcls3_1d(2, 2, 3, 5, dense_kernel_size=(3, 3)).eval()
    calls = []
    original = Dcls3_1d.build_kernel
    monkeypatch.setattr(Dcls3_1d, "build_kernel", lambda self: calls.append(1) or original(self))
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.no_grad():
        y1, y2 = layer(x), layer(x)
    assert len(calls) == 1 and torch.equal(y1, y2)
    layer.double()
    with torch.no_grad():
        y3 = layer(x.double())
    assert len(calls) == 2 and torch.allclose(y3, y1.double(), atol=1e-6)
    with torch.no_grad():
        layer.weight[0, 0, 0, 0, 0] = float("nan")  # bitwise comparison: NaN equals itself, one rebuild
        layer(x.double()), layer(x.double())
    assert len(calls) == 3


def test_deepcopy_of_cached_layer_is_independent():
    layer, x = _layer(), torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        before = layer(x)
    clone = copy.deepcopy(layer)
    clone.weight.data.add_(1.0)
    with torch.no_grad():
        assert torch.equal(layer(x), before)
    _assert_current(clone, x, before)
