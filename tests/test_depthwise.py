"""depthwise_conv2d must match F.conv2d (groups=C) in value, gradients, dtype and memory format."""

from __future__ import annotations

import functools
import itertools
import json
import os

import pytest
import torch
import torch.nn.functional as F

from dcls_vision.ops import depthwise as dw
from dcls_vision.ops.algo_select import AlgorithmError, AlgoSelector, cache_dir
from dcls_vision.ops.depthwise import depthwise_conv2d
from dcls_vision.ops.depthwise_algorithms import (
    FORWARD_ALGORITHMS,
    GRAD_INPUT_ALGORITHMS,
    GRAD_WEIGHT_ALGORITHMS,
    choose_algorithms,
)

ALL_ALGORITHMS = list(itertools.product(FORWARD_ALGORITHMS, GRAD_INPUT_ALGORITHMS, GRAD_WEIGHT_ALGORITHMS))
KERNELS = [(3, 3), (7, 7), (13, 13), (17, 17), (23, 23), (4, 6), (23, 5)]


def _inputs(
    n: int,
    c: int,
    h: int,
    w: int,
    kernel: tuple[int, int],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    bias: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c, 1, *kernel, generator=g, dtype=dtype) / (kernel[0] * kernel[1]) ** 0.5
    b = torch.randn(c, generator=g, dtype=dtype).requires_grad_() if bias else None
    return x.requires_grad_(), wt.requires_grad_(), b


def _grads(out: torch.Tensor, go: torch.Tensor, tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    present = [t for t in tensors if t is not None]
    gs = iter(torch.autograd.grad(out, present, go))
    return [next(gs) if t is not None else None for t in tensors]


def _compare(x, w, b, stride, padding, rtol: float, atol: float, **kw) -> torch.Tensor:
    """Forward + all gradients vs F.conv2d; returns our output for further checks."""
    ref = F.conv2d(x, w, b, stride, padding, 1, x.shape[1])
    out = depthwise_conv2d(x, w, b, stride, padding, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    go = torch.randn_like(ref)
    for got, exp in zip(_grads(out, go, [x, w, b]), _grads(ref, go, [x, w, b])):
        if exp is not None:
            assert got.shape == exp.shape and got.dtype == exp.dtype
            torch.testing.assert_close(got, exp, rtol=rtol, atol=atol * max(1.0, exp.abs().max().item()))
    return out


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k[0]}x{k[1]}")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad_mode", ["zero", "half"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_conv2d_float32(kernel, stride, pad_mode, channels_last, batch):
    h, w = 27, 25
    padding = (0, 0) if pad_mode == "zero" else (kernel[0] // 2, kernel[1] // 2)
    x, wt, b = _inputs(batch, 4, h, w, kernel, channels_last=channels_last, bias=stride == 1)
    out = _compare(x, wt, b, stride, padding, rtol=1e-4, atol=1e-4, impl="custom")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("algorithms", ALL_ALGORITHMS, ids="/".join)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [(0, 0), (2, 3), (4, 6)])
def test_every_algorithm_float64(algorithms, stride, padding):
    """All forced algorithm combinations, odd/even non-square kernels, padding up to k - 1 and beyond."""
    for kernel, cl in (((5, 4), True), ((3, 6), False)):
        x, wt, b = _inputs(2, 3, 13, 11, kernel, dtype=torch.float64, channels_last=cl)
        out = _compare(x, wt, b, stride, padding, rtol=1e-9, atol=1e-10, impl="custom", algorithms=algorithms)
        assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize(
    "algorithms",
    [("aten", "aten", "batch_groups"), ("fft", "fft", "fft"), ("aten", "flip", "channel_groups")],
    ids="/".join,
)
@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_custom_path(algorithms, stride):
    x, wt, b = _inputs(2, 2, 6, 5, (4, 3), dtype=torch.float64)

    def fn(x, wt, b):
        return depthwise_conv2d(x, wt, b, stride, (2, 1), impl="custom", algorithms=algorithms)

    assert torch.autograd.gradcheck(fn, (x, wt, b), fast_mode=False)


@pytest.mark.parametrize("algorithms", [("fft", "aten", "batch_groups"), ("aten", "fft", "fft")], ids="/".join)
def test_gradgradcheck_custom_path(algorithms):
    """The backward is made of differentiable ops, so double backward works on the custom path too."""
    x, wt, b = _inputs(1, 2, 6, 5, (3, 4), dtype=torch.float64)

    def fn(x, wt, b):
        return depthwise_conv2d(x, wt, b, 1, (1, 2), impl="custom", algorithms=algorithms)

    assert torch.autograd.gradgradcheck(fn, (x, wt, b), fast_mode=True)


def test_auto_dispatch():
    x, wt, b = _inputs(2, 4, 20, 20, (13, 13), channels_last=True)
    assert "DepthwiseConv2d" in type(depthwise_conv2d(x, wt, b, 1, 6).grad_fn).__name__
    small = torch.randn(4, 1, 7, 7, requires_grad=True)
    assert type(depthwise_conv2d(x, small, b, 1, 3).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        out = depthwise_conv2d(x, wt, b, 1, 6)
    assert out.grad_fn is None and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, wt, b, 1, 6, 1, 4), rtol=1e-4, atol=1e-4)
    x64, w64, b64 = _inputs(1, 2, 9, 9, (13, 13), dtype=torch.float64)
    assert type(depthwise_conv2d(x64, w64, b64, 1, 6).grad_fn).__name__ == "ConvolutionBackward0"
    assert depthwise_conv2d(x, wt, None, 1, 6, impl="aten").grad_fn is not None


def test_choose_algorithms_rule():
    # ConvNeXt-T: FFT for 56x56 with 23x23 (forward and backward) and 17x17 (backward only) ...
    assert choose_algorithms((8, 96, 56, 56), (23, 23), (1, 1), (11, 11)) == ("fft", "fft", "fft")
    assert choose_algorithms((8, 96, 56, 56), (17, 17), (1, 1), (8, 8)) == ("aten", "fft", "fft")
    # ... direct grouped weight gradient on small maps, aten's up to 7x7 and for the input everywhere else.
    assert choose_algorithms((8, 768, 7, 7), (23, 23), (1, 1), (11, 11)) == ("aten", "aten", "batch_groups")
    assert choose_algorithms((8, 96, 56, 56), (7, 7), (1, 1), (3, 3)) == ("aten", "aten", "aten")
    assert choose_algorithms((8, 96, 56, 56), (23, 23), (2, 2), (11, 11)) == ("aten", "aten", "batch_groups")


def test_sum_backward_expanded_grad_and_no_bias():
    """grad_output from .sum() is an expanded (stride-0) tensor; bias=None; weight-only / input-only grads."""
    x, wt, _ = _inputs(2, 3, 16, 16, (9, 9), channels_last=True)
    for algorithms in [("aten", "aten", "batch_groups"), ("fft", "fft", "fft"), ("aten", "flip", "channel_groups")]:
        out = depthwise_conv2d(x, wt, None, 1, 4, impl="custom", algorithms=algorithms)
        gx, gw = torch.autograd.grad(out.sum(), (x, wt))
        rx, rw = torch.autograd.grad(F.conv2d(x, wt, None, 1, 4, 1, 3).sum(), (x, wt))
        torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)
    (gw,) = torch.autograd.grad(depthwise_conv2d(x.detach(), wt, None, 1, 4).sum(), (wt,))
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-3)


def test_unbatched_and_unsupported_fall_back():
    x = torch.randn(3, 12, 12)
    wt = torch.randn(3, 1, 9, 9)
    torch.testing.assert_close(
        depthwise_conv2d(x, wt, None, 1, 4, impl="custom"), F.conv2d(x, wt, None, 1, 4, 1, 3), rtol=1e-4, atol=1e-4
    )
    multiplier = torch.randn(6, 1, 9, 9)  # depth multiplier 2: not our case, F.conv2d handles it
    torch.testing.assert_close(
        depthwise_conv2d(x[None], multiplier, None, 1, 4), F.conv2d(x[None], multiplier, None, 1, 4, 1, 3)
    )
    with pytest.raises(ValueError):
        depthwise_conv2d(x[None], wt, impl="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        depthwise_conv2d(x[None], wt, algorithms=("aten", "aten", "winograd"))


@pytest.mark.parametrize("kernel", [(3, 3), (13, 13), (17, 17)], ids=lambda k: f"{k[0]}x{k[1]}")
def test_bf16_autocast(kernel):
    x, wt, b = _inputs(2, 8, 20, 20, kernel, channels_last=True)
    p = (kernel[0] // 2, kernel[1] // 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.conv2d(x, wt, b, 1, p, 1, 8)
        out = depthwise_conv2d(x, wt, b, 1, p)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert type(out.grad_fn).__name__ == "DepthwiseConv2dFunctionBackward"  # the custom function, not aten's
    assert out.is_contiguous(memory_format=torch.channels_last)
    # reference in float32 from the same bf16-rounded operands: we compute in float32 and round once
    xr, wr, br = (t.detach().bfloat16().float().requires_grad_() for t in (x, wt, b))
    exact = F.conv2d(xr, wr, br, 1, p, 1, 8)
    torch.testing.assert_close(out.float(), exact, rtol=1e-2, atol=1e-2)
    go = torch.randn_like(exact)
    got = torch.autograd.grad(out, (x, wt, b), go.bfloat16())
    exp = torch.autograd.grad(exact, (xr, wr, br), go.bfloat16().float())
    for g, e in zip(got, exp):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2 * max(1.0, e.abs().max().item()))


def _compile_check(backend: str, kernel: int, size: int) -> None:
    x, wt, b = _inputs(2, 4, size, size, (kernel, kernel), channels_last=True)
    p = kernel // 2

    def f(x, wt, b):
        return depthwise_conv2d(x, wt, b, 1, p).relu().square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, backend=backend, fullgraph=True)  # fullgraph: no graph break allowed
    got = torch.autograd.grad(compiled(x, wt, b), (x, wt, b))
    exp = torch.autograd.grad(F.conv2d(x, wt, b, 1, p, 1, 4).relu().square().sum(), (x, wt, b))
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_torch_compile_aot_eager():
    _compile_check("aot_eager", 13, 20)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_torch_compile_inductor():
    """Real inductor codegen (~10 s on 2 cores), on a shape that takes the FFT path."""
    _compile_check("inductor", 23, 56)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    x, wt, b = (t.detach().cuda().requires_grad_() for t in _inputs(2, 4, 20, 20, (13, 13), channels_last=True))
    _compare(x, wt, b, 1, 6, rtol=1e-3, atol=1e-3)
    _compare(x, wt, b, 2, 6, rtol=1e-3, atol=1e-3, impl="custom")


# ----------------------------------------------------------------------------------------------------
# Measured dispatch (the GPU path's selection logic, exercised on CPU with real candidates).
# ----------------------------------------------------------------------------------------------------


class FakeTimer:
    """Runs each candidate's real step once (so a failing one raises) and answers a preset time."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.calls = seconds, []

    def __call__(self, name, fn):
        fn()
        self.calls.append(name)
        return self.seconds[name]


def _dispatch(x, wt, b, selector, stride=1, padding=6):
    return dw._dispatch(x, wt, b, (stride, stride), (padding, padding), None, selector)


GRAD_FN = {
    "aten_cl": "ConvolutionBackward0",
    "fft": "DepthwiseConv2dFunctionBackward",
    "custom": "DepthwiseConv2dFunctionBackward",
}


@pytest.mark.parametrize("fastest", ["aten_cl", "fft", "custom"])
def test_selector_runs_measured_fastest_and_caches(fastest, tmp_path):
    x, wt, b = _inputs(2, 4, 20, 20, (13, 13), channels_last=True)
    times = {"aten_nchw": 3.0, "aten_cl": 2.0, "custom": 2.5, "fft": 4.0, fastest: 1.0}
    timer = FakeTimer(times)
    selector = AlgoSelector("cpu-test", tmp_path / "cpu-test.json", timer)
    out = _dispatch(x, wt, b, selector)
    assert sorted(timer.calls) == sorted(dw.candidates(x.device, (1, 1))) == sorted(times)
    assert type(out.grad_fn).__name__ == GRAD_FN[fastest]
    ref = F.conv2d(x, wt, b, 1, 6, 1, 4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    (entry,) = selector.memory.values()
    assert entry["algorithm"] == fastest and set(entry["ms"]) == set(times)
    timer.calls.clear()
    _dispatch(x, wt, b, selector)  # same key: no new measurement
    with torch.no_grad():
        _dispatch(x, wt, b, selector)  # inference is its own key (forward alone timed)
    assert sorted(timer.calls) == sorted(times) and len(selector.memory) == 2
    assert any(k.endswith("grad_none") for k in selector.memory)


def test_selector_json_persistence_and_reload(tmp_path):
    path = tmp_path / "cache" / "depthwise" / "GPU_X.json"
    x, wt, b = _inputs(2, 4, 12, 12, (9, 9))
    first = AlgoSelector("GPU X", path, FakeTimer({"aten_nchw": 1.0, "aten_cl": 2.0, "custom": 3.0, "fft": 4.0}))
    _dispatch(x, wt, b, first, padding=4)
    data = json.loads(path.read_text())
    assert data["device"] == "GPU X" and data["versions"]["torch"] == torch.__version__
    ((key, entry),) = data["entries"].items()
    assert entry["algorithm"] == "aten_nchw" and "|nchw|2x4x12x12|k9x9|s1x1|p4x4|bias1|grad_xwb" in key
    assert [p.name for p in path.parent.iterdir()] == ["GPU_X.json"]  # atomic write: no temp file left

    class NoTimer:
        def __call__(self, name, fn):
            raise AssertionError("a cached key must not be re-measured")

    reloaded = AlgoSelector("GPU X", path, NoTimer())
    out = _dispatch(x, wt, b, reloaded, padding=4)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    # another key measured by a second process is merged, not overwritten
    other = AlgoSelector("GPU X", path, FakeTimer({"aten_nchw": 9.0, "aten_cl": 2.0, "custom": 3.0}))
    _dispatch(x, wt, b, other, stride=2, padding=4)
    assert {e["algorithm"] for e in json.loads(path.read_text())["entries"].values()} == {"aten_nchw", "aten_cl"}
    # a new torch/triton version re-measures; a corrupt file is ignored with a warning and rewritten
    upgraded = AlgoSelector(
        "GPU X",
        path,
        FakeTimer({"aten_nchw": 5.0, "aten_cl": 2.0, "custom": 3.0, "fft": 1.0}),
        versions={"torch": "99", "triton": "99"},
    )
    assert type(_dispatch(x, wt, b, upgraded, padding=4).grad_fn).__name__ == "DepthwiseConv2dFunctionBackward"
    path.write_text("{not json")
    broken = AlgoSelector("GPU X", path, FakeTimer({"aten_nchw": 5.0, "aten_cl": 1.0, "custom": 3.0, "fft": 4.0}))
    with pytest.warns(UserWarning, match="unreadable"):
        _dispatch(x, wt, b, broken, padding=4)
    assert json.loads(path.read_text())["entries"].popitem()[1]["algorithm"] == "aten_cl"


def test_selector_skips_failing_candidate(tmp_path):
    """'triton' cannot run a CPU tensor outside the interpreter: its (fake) best time is never used."""
    x, wt, b = _inputs(1, 3, 10, 10, (5, 5))
    selector = AlgoSelector("cpu-test", None, FakeTimer({"triton": 0.1, "aten_nchw": 2.0, "aten_cl": 1.0}))
    step = functools.partial(
        dw.timed_step, x=x, weight=wt, bias=b, stride=(1, 1), padding=(2, 2), need=(True, True, True)
    )
    assert selector.choose("k", ["triton", "aten_nchw", "aten_cl"], lambda n: step(n)) == "aten_cl"
    entry = selector.memory["k"]
    assert "triton" in entry["errors"] and "CUDA" in entry["errors"]["triton"] and "triton" not in entry["ms"]
    with pytest.raises(AlgorithmError, match="no depthwise algorithm runs"):
        selector.choose("k2", ["triton"], lambda n: step(n))


def test_forced_algorithm_env(monkeypatch):
    x, wt, b = _inputs(2, 4, 20, 20, (13, 13), channels_last=True)
    monkeypatch.setenv("DCLS_DEPTHWISE_ALGO", "winograd")
    with pytest.raises(AlgorithmError) as info:
        depthwise_conv2d(x, wt, b, 1, 6)
    msg = str(info.value)
    assert "\n" not in msg and "'winograd'" in msg and "aten_nchw, aten_cl, triton, fft, custom" in msg
    for name, grad_fn in [("aten_cl", "ConvolutionBackward0"), ("fft", "DepthwiseConv2dFunctionBackward")]:
        monkeypatch.setenv("DCLS_DEPTHWISE_ALGO", name)
        out = depthwise_conv2d(x, wt, b, 1, 6)
        assert type(out.grad_fn).__name__ == grad_fn
        torch.testing.assert_close(out, F.conv2d(x, wt, b, 1, 6, 1, 4), rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("DCLS_DEPTHWISE_ALGO", "auto")
    assert "DepthwiseConv2d" in type(depthwise_conv2d(x, wt, b, 1, 6).grad_fn).__name__  # the CPU rule again
    if os.environ.get("TRITON_INTERPRET") != "1":
        monkeypatch.setenv("DCLS_DEPTHWISE_ALGO", "triton")
        with pytest.raises(AlgorithmError, match="needs a CUDA tensor"):
            depthwise_conv2d(x, wt, b, 1, 6)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DCLS_DEPTHWISE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "dcls-vision"
    monkeypatch.setenv("DCLS_DEPTHWISE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("DCLS_DEPTHWISE_CACHE", "off")
    assert cache_dir() is None
