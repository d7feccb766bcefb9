"""Triton depthwise kernels against F.conv2d autograd, run on CPU by Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so ``test_interpreter_suite`` reruns this file's
``test_interp_*`` tests in a subprocess with it set; in the main session they skip (and in the subprocess
the suite test skips). Shapes are tiny: the interpreter runs each Triton op in Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None
interp = pytest.mark.skipif(not INTERPRETING, reason="runs in test_interpreter_suite's TRITON_INTERPRET=1 subprocess")

# (dtype, channels_last, stride, kernel, padding): every kernel/stride/layout in float32; bf16 and fp16
# on an even non-square kernel, each layout and stride once (the interpreter needs ~1-3 s per case).
_K = [((3, 3), (1, 1)), ((4, 4), (0, 0)), ((5, 3), (2, 0))]
CASES = [(torch.float32, cl, s, k, p) for cl in (False, True) for s in (1, 2) for k, p in _K] + [
    (dt, cl, s, (4, 3), (2, 1))
    for dt, cl, s in [
        (torch.bfloat16, False, 1),
        (torch.bfloat16, True, 2),
        (torch.float16, True, 1),
        (torch.float16, False, 2),
    ]
]
N_INTERP_TESTS = len(CASES) + 4


def _case_id(case: tuple) -> str:
    dt, cl, s, k, p = case
    return f"{str(dt)[6:]}-{'cl' if cl else 'nchw'}-s{s}-k{k[0]}x{k[1]}-p{p[0]}{p[1]}"


def _operands(dtype: torch.dtype, channels_last: bool, kernel: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, 9, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(3, 1, *kernel, generator=g) / kernel[0]).to(dtype)
    b = torch.randn(3, generator=g).to(dtype)
    return [t.requires_grad_() for t in (x, w, b)]


def _assert_rounded_once(got: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> None:
    """float32 sums rounded once to ``dtype``: within one ulp of the exact value (a bf16/fp16 sum is not).

    One ulp, not half: the interpreter truncates float32 -> bfloat16 where GPUs round to nearest even.
    """
    ulp = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    torch.testing.assert_close(got.double(), exact, rtol=ulp, atol=ulp * 1e-2 * exact.abs().max().item())


@interp
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_interp_matches_conv2d(case):
    from dcls_vision.ops.triton_depthwise import TritonDepthwiseFunction

    dtype, channels_last, s, kernel, padding = case
    x, w, b = _operands(dtype, channels_last, kernel)
    out = TritonDepthwiseFunction.apply(x, w, b, (s, s), padding)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.conv2d(*ref_leaves, (s, s), padding, 1, 3)
    assert out.shape == ref.shape and out.dtype == dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    _assert_rounded_once(out, ref, dtype)
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, (x, w, b), go)
    exp = torch.autograd.grad(ref, ref_leaves, go.double())
    assert got[0].is_contiguous(memory_format=fmt)
    for g, e, name in zip(got, exp, "xwb"):
        assert g.dtype == dtype, name
        _assert_rounded_once(g, e, dtype)


@interp
def test_interp_expanded_grad_and_no_bias():
    """.sum() gives a stride-0 grad_output; input-only and weight-only gradients; no bias."""
    from dcls_vision.ops.triton_depthwise import triton_depthwise_conv2d

    x, w, _ = _operands(torch.float32, True, (3, 4))
    gx, gw = torch.autograd.grad(triton_depthwise_conv2d(x, w, None, (2, 1), (1, 2)).sum(), (x, w))
    rx, rw = torch.autograd.grad(F.conv2d(x, w, None, (2, 1), (1, 2), 1, 3).sum(), (x, w))
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)
    (gw_only,) = torch.autograd.grad(triton_depthwise_conv2d(x.detach(), w, None, (2, 1), (1, 2)).sum(), (w,))
    torch.testing.assert_close(gw_only, rw, rtol=1e-5, atol=1e-4)


@interp
def test_interp_autocast_bf16_takes_triton_function(monkeypatch):
    """Under bf16 autocast the forced Triton path gets bf16 operands and returns bf16: no fp32 up-cast."""
    from dcls_vision.ops import Dcls2d
    from dcls_vision.ops.depthwise import depthwise_conv2d

    monkeypatch.setenv("DCLS_DEPTHWISE_ALGO", "triton")
    x, w, b = _operands(torch.float32, True, (5, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv2d(x, w, b, 1, 2)
    assert out.dtype == torch.bfloat16
    assert type(out.grad_fn).__name__ == "TritonDepthwiseFunctionBackward"
    leaves = [t.detach().bfloat16().double().requires_grad_() for t in (x, w, b)]
    exact = F.conv2d(*leaves, 1, 2, 1, 3)
    _assert_rounded_once(out, exact, torch.bfloat16)
    go = torch.randn_like(exact).bfloat16()
    got = torch.autograd.grad(out, (x, w, b), go)
    exp = torch.autograd.grad(exact, leaves, go.double())
    for g, e in zip(got, exp):
        assert g.dtype == torch.float32  # autocast's cast back to the fp32 leaves
        _assert_rounded_once(g.bfloat16(), e, torch.bfloat16)
    layer = Dcls2d(3, 3, 4, 7, groups=3).to(memory_format=torch.channels_last)  # the DCLS layer, same path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and type(y.grad_fn).__name__ == "TritonDepthwiseFunctionBackward"


@interp
@pytest.mark.parametrize("fastest", ["triton", "aten_cl"])
def test_interp_dispatch_times_triton(fastest, tmp_path):
    """The real candidate list on CPU includes Triton under the interpreter; the fastest one is run."""
    from dcls_vision.ops import depthwise as dw
    from dcls_vision.ops.algo_select import AlgoSelector

    calls = []

    def timer(name, fn):
        fn()  # every candidate really runs once
        calls.append(name)
        return 0.001 if name == fastest else 0.002

    selector = AlgoSelector("cpu-interp", tmp_path / "c.json", timer)
    x, w, b = _operands(torch.float32, True, (3, 3))
    out = dw._dispatch(x, w, b, (1, 1), (1, 1), None, selector)
    assert "triton" in calls and set(calls) == set(dw.candidates(x.device, (1, 1)))
    expected = "TritonDepthwiseFunctionBackward" if fastest == "triton" else "ConvolutionBackward0"
    assert type(out.grad_fn).__name__ == expected
    torch.testing.assert_close(out, F.conv2d(x, w, b, 1, 1, 1, 3), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "c.json").read_text())["entries"].popitem()[1]["algorithm"] == fastest


@pytest.mark.skipif(INTERPRETING or not HAVE_TRITON, reason="needs triton; not inside the interpreter run")
def test_interpreter_suite():
    """Run the test_interp_* tests above in a TRITON_INTERPRET=1 subprocess (about a minute on 2 busy cores)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DCLS_DEPTHWISE_ALGO", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "test_interp_"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert f"{N_INTERP_TESTS} passed" in proc.stdout and "skipped" not in proc.stdout, tail


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "tools" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETING, reason="checks the no-CUDA message")
def test_bench_gpu_needs_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _bench_gpu().main(["--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "a CUDA device is required" in err
    assert not (tmp_path / "bench_gpu.json").exists()


@pytest.mark.skipif(INTERPRETING, reason="not inside the interpreter run")
def test_bench_gpu_tiny_cpu(tmp_path):
    """The benchmark's code paths on CPU: every candidate per layer, construction bytes, two models side by side."""
    from dcls_vision.ops import depthwise as dw

    result = _bench_gpu().main(["--device", "cpu", "--tiny", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert saved["layers"] == json.loads(json.dumps(result["layers"]))
    assert len(saved["layers"]) == 4 and (tmp_path / "bench_gpu.png").stat().st_size > 10_000
    for row in saved["layers"]:
        names = set(dw.candidates(torch.device("cpu"), (1, 1)))
        assert set(row["fwd_ms"]) == set(row["fwd_bwd_ms"]) == names and not row["errors"]
        assert row["pick_fwd_bwd"] == min(row["fwd_bwd_ms"], key=row["fwd_bwd_ms"].get)
    assert all(r["build_alloc_x_kernel"] >= 1.0 for r in saved["construction"]) and len(saved["construction"]) == 4
    base, dcls = saved["models"]["rows"]
    assert dcls["train_images_per_s_vs_dcls_quickstart_baseline"] == pytest.approx(
        dcls["train_images_per_s"] / base["train_images_per_s"]
    )
    assert base["infer_peak_mem_mb"] > 0 and dcls["train_peak_mem_mb"] > 0
