"""The DCLS operator: formulas, axis convention, gradients, sharing, caching, export, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from dcls_vision.ops import (
    INTERPOLATIONS,
    Dcls1d,
    Dcls2_1d,
    Dcls2d,
    Dcls3_1d,
    Dcls3_2d,
    Dcls3d,
    clamp_positions_,
    convert_to_conv,
    dcls_parameters,
    share_positions,
)
from dcls_vision.ops.interpolation import EPS, construct_kernel

# (class, extra kwargs, spatial rank)
VARIANTS = [
    (Dcls1d, {}, 1),
    (Dcls2d, {}, 2),
    (Dcls3d, {}, 3),
    (Dcls2_1d, {"dense_kernel_size": 3}, 2),
    (Dcls3_1d, {"dense_kernel_size": (3, 2)}, 3),
    (Dcls3_2d, {"dense_kernel_size": 3}, 3),
]
VARIANT_IDS = [v[0].__name__ for v in VARIANTS]


def _layer(cls, kw, interpolation, size=5, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    layer = cls(4, 6, 3, size, groups=2, interpolation=interpolation, dtype=dtype, **kw, **extra)
    with torch.no_grad():
        for m, s in enumerate(layer.dilated_kernel_size):
            layer.positions[m].uniform_(-s / 2 + 0.6, s / 2 - 0.6)
        if layer.sigma is not None:
            layer.sigma.uniform_(0.1, 0.8)
    return layer


def broadcast_kernel(layer) -> torch.Tensor:
    """The thesis formula written as a plain broadcast over the whole grid (the O(C·K·Πs) way)."""
    w, p = layer.weight.double(), layer.positions.double()
    sig = None if layer.sigma is None else layer.sigma.double()
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in layer.dilated_kernel_size], indexing="ij")
    m = len(grids)
    spread = 1.0
    for a, grid in enumerate(grids):
        x = (p[a] + layer.dilated_kernel_size[a] // 2).reshape(*p[a].shape, *([1] * m)) - grid
        if layer.interpolation == "bilinear":
            spread = spread * torch.relu(1 - x.abs())
        elif layer.interpolation == "triangle":
            spread = spread * torch.relu(1.0 + sig[a].abs().reshape(*x.shape[:-m], *([1] * m)) - x.abs())
        else:
            width = 0.27 + sig[a].abs().reshape(*x.shape[:-m], *([1] * m))
            spread = spread * torch.exp(-(x**2) / (2 * width**2))
    if layer.interpolation != "bilinear":
        spread = spread / (EPS + spread.sum(dim=tuple(range(-m, 0)), keepdim=True))
    # spread: (O, I, *dense, K, *learned) -> sum over K
    kernel = (w.reshape(*w.shape, *([1] * m)) * spread).sum(dim=w.dim() - 1)
    # kernel: (O, I, *dense, *learned) -> put learned axes in place
    n = kernel.dim() - 2
    dense_axes = [a for a in range(n) if a not in layer.learned_axes]
    order = [0, 1] + [0] * n
    src_dense, src_learned = 2, 2 + len(dense_axes)
    for a in range(n):
        if a in layer.learned_axes:
            order[2 + a] = src_learned
            src_learned += 1
        else:
            order[2 + a] = src_dense
            src_dense += 1
    return kernel.permute(*order)


# ----------------------------------------------------------------- formulas
def test_bilinear_1d_hand_computed():
    layer = Dcls1d(1, 1, 1, 5, interpolation="bilinear", bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.positions.fill_(0.3)  # grid coordinate 2.3
    assert torch.allclose(layer.build_kernel().flatten(), torch.tensor([0, 0, 1.4, 0.6, 0]))


def test_bilinear_2d_non_square_hand_computed():
    layer = Dcls2d(1, 1, 1, (3, 5), interpolation="bilinear", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.positions[0].fill_(-0.5)  # row coordinate 0.5
        layer.positions[1].fill_(1.25)  # column coordinate 3.25
    expected = torch.zeros(3, 5)
    expected[0, 3] = expected[1, 3] = 0.5 * 0.75
    expected[0, 4] = expected[1, 4] = 0.5 * 0.25
    assert torch.allclose(layer.build_kernel()[0, 0], expected)


def test_triangle_1d_hand_computed():
    layer = Dcls1d(1, 1, 1, 5, interpolation="triangle", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.positions.fill_(0.0)
        layer.sigma.fill_(-0.5)  # |σ| is used: width 1 + 0.5
    # profile: [0, 0.5, 1.5, 0.5, 0] / 2.5
    expected = torch.tensor([0, 0.2, 0.6, 0.2, 0]) * 2.5 / (2.5 + EPS)
    assert torch.allclose(layer.build_kernel().flatten(), expected)


def test_gauss_2d_hand_computed():
    layer = Dcls2d(1, 1, 1, (3, 3), interpolation="gauss", bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(3.0)
        layer.positions.fill_(0.0)
        layer.sigma.fill_(0.23)  # width 0.5: exp(-x²/(2·0.25)) = exp(-2x²)
    e = math.exp(-2.0)
    row = torch.tensor([e, 1.0, e], dtype=torch.float64)
    expected = 3.0 * torch.outer(row, row) / ((1 + 2 * e) ** 2 + EPS)
    assert torch.allclose(layer.build_kernel()[0, 0], expected, atol=1e-12)


def test_axis_convention_positions0_moves_along_h():
    layer = Dcls2d(1, 1, 1, (5, 3), interpolation="bilinear", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.positions[0].fill_(2.0)
        layer.positions[1].fill_(-1.0)
    kernel = layer.build_kernel()[0, 0]
    assert kernel[4, 0] == 1.0 and kernel.sum() == 1.0
    # Cross-correlation with a centred impulse: the output peak sits opposite the kernel offset.
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    y = layer(x)[0, 0]
    assert y.shape == (9, 9)
    assert y[2, 5] == 1.0 and y.sum() == 1.0


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("cls,kw,n", VARIANTS, ids=VARIANT_IDS)
def test_kernel_matches_broadcast_formula(cls, kw, n, interpolation):
    layer = _layer(cls, kw, interpolation, size=(5, 4, 7)[: cls.n_learned], dtype=torch.float64)
    assert torch.allclose(layer.build_kernel(), broadcast_kernel(layer), atol=1e-12)


@pytest.mark.parametrize("size", [4, 6, (4, 7)])
def test_even_and_non_square_kernels_centred(size):
    layer = Dcls2d(1, 1, 1, size, interpolation="bilinear", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.positions.zero_()
    kernel = layer.build_kernel()[0, 0]
    sizes = layer.dilated_kernel_size
    assert kernel[sizes[0] // 2, sizes[1] // 2] == 1.0
    x = torch.randn(1, 1, 10, 11)
    assert torch.allclose(layer(x), x)  # a centred unit element is the identity, output size kept


def test_initialisation():
    layer = Dcls2d(64, 64, 26, 23, groups=64, interpolation="gauss")
    assert layer.weight.shape == (64, 1, 26)
    assert layer.positions.shape == layer.sigma.shape == (2, 64, 1, 26)
    assert 0.4 < layer.positions.std().item() < 0.6
    assert torch.all(layer.sigma == 0.23)
    assert torch.all(Dcls2d(2, 2, 3, 7, interpolation="triangle").sigma == 0.0)
    assert Dcls2d(2, 2, 3, 7, interpolation="bilinear").sigma is None


def test_clamp_limits_keep_elements_inside_even_and_odd_kernels():
    layer = Dcls2d(2, 2, 5, (7, 6), interpolation="bilinear")
    with torch.no_grad():
        layer.positions.fill_(100.0)
        layer.positions[:, 0].fill_(-100.0)
    clamp_positions_(layer)
    assert layer.positions[0].max() == 3 and layer.positions[1].max() == 2
    assert layer.positions[0].min() == -3 and layer.positions[1].min() == -3
    # every element still spreads its whole weight inside the grid
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assert torch.allclose(layer.build_kernel().sum(dim=(-2, -1)), torch.full((2, 2), 5.0))


def test_gauss_tails_never_denormal():
    layer = Dcls2d(8, 8, 4, 41, groups=8, interpolation="gauss")
    with torch.no_grad():
        layer.positions.fill_(-20.0)
        layer.sigma.fill_(0.0)
    kernel = layer.build_kernel()
    kernel.sum().backward()
    tiny = torch.finfo(torch.float32).tiny
    for t in (kernel, layer.positions.grad, layer.sigma.grad, layer.weight.grad):
        assert not ((t != 0) & (t.abs() < tiny)).any()


FAR_OFFSETS = [d / 8 for d in range(1, 322, 4)]  # cells beyond the kernel edge, 1/8..40 (exact in float32)


@pytest.mark.parametrize("cls,kw,n", VARIANTS, ids=VARIANT_IDS)
def test_gauss_far_outside_matches_formula_float32(cls, kw, n):
    """An element outside the kernel (positions are unclamped between a step and clamp_) still gives the formula.

    Element 0 sits at the centre; element 1 lies d cells beyond the edge along the first or every learned
    axis. Tolerance 1e-6 of the kernel max (~8 float32 ulps): the exponent z ≲ -ln ε ≈ 16 of every term
    that matters carries a relative rounding of a few ulps, i.e. ~16 · 6e-8. Tails used to be cut per axis
    before normalisation: in 3-D the kernel was 0 where the formula gives ~e^-26/ε, error 7.9e-5 at d=3.625.
    """
    layer = cls(1, 1, 2, 7, interpolation="gauss", bias=False, **kw)
    tiny = torch.finfo(torch.float32).tiny
    worst = (0.0, None)
    for d in FAR_OFFSETS:
        for along in ("first", "all"):
            with torch.no_grad():
                layer.weight.fill_(1.0)
                layer.positions.zero_()
                layer.sigma.fill_(0.23)
                layer.positions[: 1 if along == "first" else None, ..., 1] = 3 + d
            kernel, expected = layer.build_kernel(), broadcast_kernel(layer)
            error = ((kernel.double() - expected).abs().max() / expected.abs().max()).item()
            worst = max(worst, (error, (d, along)), key=lambda t: t[0])
            assert not ((kernel != 0) & (kernel.abs() < tiny)).any()  # denormal protection kept
    assert worst[0] < 1e-6, f"max error {worst[0]:.2e} relative to the kernel max at (offset, axes) {worst[1]}"


def test_gauss_far_outside_gradients():
    """The per-element exponent shift is held constant for autograd; the gradient stays exact far outside."""
    torch.manual_seed(0)
    layer = Dcls3d(1, 1, 3, 5, interpolation="gauss", dtype=torch.float64)
    with torch.no_grad():
        layer.positions.copy_(torch.tensor([[0.31, 4.6, -5.3], [-0.62, 0.2, 4.9], [0.45, -0.3, 0.7]]).view(3, 1, 1, 3))
        layer.sigma.uniform_(0.2, 0.6)
    params = (layer.weight, layer.positions, layer.sigma)

    def fn(*ps):
        return construct_kernel(*ps, layer.dilated_kernel_size, "gauss", layer.learned_axes)

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("cls,kw,n", VARIANTS, ids=VARIANT_IDS)
def test_gradcheck(cls, kw, n, interpolation):
    torch.manual_seed(0)
    layer = cls(2, 2, 2, (4, 3, 3)[: cls.n_learned], interpolation=interpolation, dtype=torch.float64, **kw)
    with torch.no_grad():  # away from the kinks of |x| and max(0, ·)
        layer.positions.copy_(
            torch.tensor([0.31, -0.62, 0.45, 0.13, -0.27, 0.58, -0.11, 0.37])
            .repeat(layer.positions.numel() // 8 + 1)[: layer.positions.numel()]
            .view_as(layer.positions)
        )
        if layer.sigma is not None:
            layer.sigma.uniform_(0.2, 0.6)
    x = torch.randn(1, 2, *([5] * n), dtype=torch.float64, requires_grad=True)
    params = [layer.weight, layer.positions, layer.bias] + ([layer.sigma] if layer.sigma is not None else [])

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(["weight", "positions", "bias", "sigma"], ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------ sharing
def _shared_pair():
    a = Dcls2d(4, 4, 3, 7, groups=4)
    b = Dcls2d(4, 4, 3, 7, groups=4)
    share_positions([a, b])
    return torch.nn.Sequential(a, b)


def test_sharing_one_tensor_and_dedup():
    model = _shared_pair()
    assert model[0].positions is model[1].positions and model[0].sigma is model[1].sigma
    assert model[0].weight is not model[1].weight
    groups = dcls_parameters(model)
    assert len(groups["positions"]) == 1 and len(groups["sigma"]) == 1
    assert sum(1 for _ in model.parameters()) == 4 + 2  # 2 weights, 2 biases, shared positions, shared sigma
    model(torch.randn(1, 4, 8, 8)).sum().backward()
    assert model[0].positions.grad is not None


def test_sharing_state_dict_round_trip_keeps_sharing():
    model = _shared_pair()
    with torch.no_grad():
        model[0].positions.uniform_(-3, 3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = _shared_pair()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh[0].positions is fresh[1].positions
    assert torch.equal(fresh[1].positions, model[0].positions)
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(fresh(x), model(x))


def test_sharing_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="cannot share positions"):
        share_positions([Dcls2d(4, 4, 3, 7, groups=4), Dcls2d(4, 4, 3, 9, groups=4)])


# -------------------------------------------------------------------- cache
def test_eval_kernel_is_cached_and_invalidated(monkeypatch):
    model = _shared_pair().eval()
    calls = []
    original = Dcls2d.build_kernel
    monkeypatch.setattr(Dcls2d, "build_kernel", lambda self: calls.append(1) or original(self))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        y1 = model(x)
        y2 = model(x)
    assert len(calls) == 2 and torch.equal(y1, y2)  # one build per layer, then reused

    # an optimizer step on the shared positions (through the first layer) invalidates both layers
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(x).square().sum().backward()
    opt.step()
    clamp_positions_(model)
    model.eval()
    calls.clear()
    with torch.no_grad():
        y3 = model(x)
    assert len(calls) == 2 and not torch.allclose(y3, y1)
    with torch.no_grad():
        fresh = torch.nn.Sequential(*[layer.to_conv() for layer in model])(x)
    assert torch.allclose(y3, fresh, atol=1e-5)

    # load_state_dict and a clamp of the shared tensor by the *other* layer also invalidate
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"].mul_(2)
    model.load_state_dict(state)
    with torch.no_grad():
        model[1].positions.add_(0.25)
        y4 = model(x)
        expected = torch.nn.Sequential(*[layer.to_conv() for layer in model])(x)
    assert torch.allclose(y4, expected, atol=1e-5)


def test_eval_with_grad_needed_builds_fresh_kernel():
    layer = Dcls2d(2, 2, 3, 7).eval()
    layer(torch.randn(1, 2, 8, 8)).sum().backward()
    assert layer.positions.grad is not None and layer.positions.grad.abs().sum() > 0


def test_to_device_and_dtype_after_forward():
    layer = Dcls2d(2, 2, 3, 7).eval()
    with torch.no_grad():
        layer(torch.randn(1, 2, 8, 8))
    layer = layer.to(torch.float64)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.float64
    assert torch.allclose(y, layer.to_conv()(x))
    if torch.cuda.is_available():  # device-agnostic: no index tensor cached on the first device
        assert torch.allclose(layer.cuda()(x.cuda()).cpu(), y)


def test_inference_mode_cache_then_grad_mode():
    layer = Dcls2d(2, 2, 3, 7).eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 2, 8, 8)
    with torch.inference_mode():
        y1 = layer(x)
    x.requires_grad_(True)  # e.g. an effective-receptive-field map: gradient w.r.t. the input only
    y2 = layer(x)
    y2.sum().backward()
    assert torch.allclose(y1, y2) and x.grad is not None


# ------------------------------------------------------------------- export
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("cls,kw,n", VARIANTS, ids=VARIANT_IDS)
def test_to_conv_identical_outputs(cls, kw, n, interpolation):
    layer = _layer(cls, kw, interpolation)
    x = torch.randn(2, 4, *([9] * n))
    conv = layer.to_conv()
    plain = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    if all(s % 2 for s in layer.kernel_size):
        assert isinstance(conv, plain)
    else:  # an even kernel centred on floor(s/2) needs asymmetric padding
        assert isinstance(conv, torch.nn.Sequential) and isinstance(conv[1], plain)
    assert torch.allclose(conv(x), layer(x), atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
@pytest.mark.parametrize("size,stride,padding", [(6, 1, None), ((4, 7), 2, None), (5, 2, 1), (7, 1, "valid")])
def test_to_conv_padding_and_stride(size, stride, padding, padding_mode):
    torch.manual_seed(0)
    layer = Dcls2d(3, 6, 4, size, stride=stride, padding=padding, groups=3, padding_mode=padding_mode)
    x = torch.randn(2, 3, 11, 12)
    y = layer(x)
    assert torch.allclose(layer.to_conv()(x), y, atol=1e-6)
    if padding is None and stride == 1:
        assert y.shape[-2:] == x.shape[-2:]


def test_convert_to_conv_model():
    model = _shared_pair()
    x = torch.randn(1, 4, 8, 8)
    y = model(x)
    converted = convert_to_conv(model)
    assert all(isinstance(m, torch.nn.Conv2d) for m in converted)
    assert torch.allclose(converted(x), y, atol=1e-6)


def test_rounded_export_places_whole_weights():
    layer = Dcls1d(1, 1, 2, 7, interpolation="gauss", bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[1.5, -2.0]]]))
        layer.positions.copy_(torch.tensor([[[[1.4, -2.6]]]]))  # centre 3 -> indices 4 and 0
    conv = layer.to_conv(rounded=True)
    assert torch.equal(conv.weight.flatten(), torch.tensor([-2.0, 0, 0, 0, 1.5, 0, 0]))


@pytest.mark.parametrize("cls,kw,n", VARIANTS, ids=VARIANT_IDS)
def test_rounded_export_equals_bilinear_at_integer_positions(cls, kw, n):
    layer = _layer(cls, kw, "gauss")
    reference = _layer(cls, kw, "bilinear")
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
        reference.positions.copy_(layer.positions.round())
    x = torch.randn(1, 4, *([8] * n))
    assert torch.allclose(layer.to_conv(rounded=True)(x), reference(x), atol=1e-6)


# ------------------------------------------------------- compile / autocast
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, 5, 9, groups=4, interpolation="gauss")
    x = torch.randn(2, 4, 12, 12)
    layer(x).square().sum().backward()
    eager_grad = layer.positions.grad.clone()
    layer.zero_grad()
    compiled = torch.compile(layer, backend="inductor")
    y = compiled(x)
    y.square().sum().backward()
    assert torch.allclose(y, layer(x), atol=1e-5)
    assert torch.allclose(layer.positions.grad, eager_grad, atol=1e-4)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_bf16_autocast(interpolation):
    torch.manual_seed(0)
    layer = Dcls2d(8, 8, 5, 9, groups=8, interpolation=interpolation)
    x = torch.randn(2, 8, 12, 12)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), reference, atol=5e-2, rtol=5e-2)
    y.float().sum().backward()
    assert layer.positions.grad is not None and torch.isfinite(layer.positions.grad).all()


# ------------------------------------------------------------- dcls import
@pytest.mark.parametrize("version", ["v0", "v1", "max", "gauss"])
@pytest.mark.parametrize(
    "name,sizes,shape",
    [
        ("Dcls1d", (7,), (2, 4, 16)),
        ("Dcls2d", (5, 8), (2, 4, 12, 13)),
        ("Dcls3d", (3, 6, 5), (2, 4, 7, 8, 9)),
        ("Dcls3_1d", (7,), (2, 4, 6, 7, 8)),
    ],
)
def test_import_from_dcls_package(version, name, sizes, shape):
    modules = pytest.importorskip("DCLS.construct.modules")
    from dcls_vision.ops.compat import from_dcls

    if name == "Dcls3_1d" and version == "v0":
        pytest.skip("dcls 0.1.1 has no v0 for Dcls3_1d")
    torch.manual_seed(0)
    kwargs = {"use_implicit_gemm": False} if name == "Dcls2d" else {}
    if name == "Dcls3_1d":
        kwargs["dense_kernel_size"] = (3, 3)
        padding = (1, 1, 3)
    else:
        padding = tuple(s // 2 for s in sizes)
    theirs = getattr(modules, name)(
        4, 6, kernel_count=3, padding=padding, dilated_kernel_size=sizes, groups=2, version=version, **kwargs
    )
    with torch.no_grad():
        theirs.P.uniform_(-2, 2)
        if theirs.SIG is not None:
            theirs.SIG.uniform_(0, 1)
    ours = from_dcls(theirs)
    x = torch.randn(*shape)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_import_from_dcls_rejects_other_modules():
    from dcls_vision.ops.compat import from_dcls

    with pytest.raises(TypeError, match="not supported"):
        from_dcls(torch.nn.Conv2d(1, 1, 3))


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"kernel_count": 0}, ValueError, "kernel_count=0"),
        ({"dilated_kernel_size": 0}, ValueError, "dilated_kernel_size=0"),
        ({"dilated_kernel_size": (3, 3, 3)}, ValueError, r"dilated_kernel_size=\(3, 3, 3\)"),
        ({"dilated_kernel_size": 2.5}, TypeError, "dilated_kernel_size=2.5"),
        ({"groups": 3}, ValueError, "groups=3 must divide in_channels=4"),
        ({"interpolation": "cubic"}, ValueError, "interpolation='cubic'.*bilinear, triangle, gauss"),
        ({"padding_mode": "mirror"}, ValueError, "padding_mode='mirror'"),
        ({"stride": 0}, ValueError, "stride=0"),
        ({"padding": -1}, ValueError, "padding=-1"),
        ({"padding": "full"}, ValueError, "padding='full'"),
        ({"in_channels": 0}, ValueError, "in_channels=0"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    args = {"in_channels": 4, "out_channels": 4, "kernel_count": 3, "dilated_kernel_size": 5} | kwargs
    with pytest.raises(exc, match=match):
        Dcls2d(**args)


def test_learned_axes_errors():
    with pytest.raises(ValueError, match="learned_axes=\\(3,\\)"):
        Dcls3_1d(2, 2, 3, 5, (3, 3), learned_axes=(3,))


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.randn(4, 8), ValueError, "rank 4"),
        (torch.randn(2, 3, 8, 8), ValueError, "3 channels.*in_channels=4"),
        (torch.ones(2, 4, 8, 8, dtype=torch.int64), TypeError, "dtype=torch.int64"),
    ],
)
def test_input_errors(x, exc, match):
    with pytest.raises(exc, match=match):
        Dcls2d(4, 4, 3, 5)(x)


def test_unbatched_input_like_conv():
    layer = Dcls2d(4, 6, 3, 5)
    x = torch.randn(4, 8, 8)
    assert torch.allclose(layer(x), layer(x[None])[0], atol=1e-6)
    assert torch.allclose(F.conv2d(x[None], layer.build_kernel(), layer.bias, padding=2)[0], layer(x), atol=1e-6)
