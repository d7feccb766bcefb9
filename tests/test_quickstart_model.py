"""Quickstart nets: timm registration, forward/backward, matched parameter counts, stage-shared positions."""

from __future__ import annotations

import pytest
import timm
import torch

import dcls_vision.models  # noqa: F401  (registers the models)
from dcls_vision.ops import Dcls2d, clamp_positions_, dcls_parameters


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors are counted once


@pytest.mark.parametrize("name", ["dcls_quickstart", "dcls_quickstart_baseline"])
def test_forward_backward_channels_last(name: str) -> None:
    model = timm.create_model(name, num_classes=10, in_chans=1, drop_path_rate=0.1)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 28, 28).to(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.forward_features(x).shape == (2, model.num_features, 14, 14)
    clamp_positions_(model)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_parameter_counts_match() -> None:
    dcls, base = timm.create_model("dcls_quickstart"), timm.create_model("dcls_quickstart_baseline")
    assert abs(n_params(dcls) - n_params(base)) / n_params(base) < 0.01
    for depth in (2, 4):  # the matched kernel_count follows the depth
        a = timm.create_model("dcls_quickstart", depth=depth)
        b = timm.create_model("dcls_quickstart_baseline", depth=depth)
        assert abs(n_params(a) - n_params(b)) / n_params(b) < 0.01


def test_positions_and_sigma_shared_across_the_stage() -> None:
    model = timm.create_model("dcls_quickstart")
    layers = [m for m in model.modules() if isinstance(m, Dcls2d)]
    assert len(layers) == len(model.stages) >= 2
    assert len({id(m.positions) for m in layers}) == 1 and len({id(m.sigma) for m in layers}) == 1
    assert len({id(m.weight) for m in layers}) == len(layers)
    groups = dcls_parameters(model)
    assert len(groups["positions"]) == 1 and len(groups["sigma"]) == 1
    assert model.no_weight_decay() >= {"stages.0.conv_dw.positions", "stages.0.conv_dw.sigma"}


def test_pretrained_and_bad_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("dcls_quickstart", pretrained=True)
    with pytest.raises(TypeError, match="unexpected arguments.*bogus"):
        timm.create_model("dcls_quickstart_baseline", bogus=1)


@pytest.mark.parametrize("size", ["dense", 3, 13, 21])
def test_kernel_study_net_is_the_thesis_net_at_equal_parameters(size) -> None:
    """Fig. 6.1's net: 2x2 stride-2 stem, three DCLS-gauss blocks of one size, K fixed; 'dense' = dense 7x7."""
    model = timm.create_model("dcls_kernel_study", dim=16, dilated_kernel_size=size)
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((2, 2), (2, 2), (0, 0))
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_features(x).shape == (2, 16, 14, 14)
    convs = [b.conv_dw for b in model.stages]
    assert len(convs) == 3
    if size == "dense":
        assert all(isinstance(c, torch.nn.Conv2d) and c.kernel_size == (7, 7) and c.groups == 16 for c in convs)
    else:
        assert all(isinstance(c, Dcls2d) and c.interpolation == "gauss" for c in convs)
        assert {(c.kernel_count, tuple(c.dilated_kernel_size)) for c in convs} == {(21, (size, size))}
        assert len({id(c.positions) for c in convs}) == 1
    dense = timm.create_model("dcls_kernel_study", dim=16, dilated_kernel_size="dense")
    assert n_params(model) == n_params(dense) - 3 * 16 * 7 * 7 + 3 * 16 * 21 + 4 * 16 * 21  # K=21: 7K = 147 = 7*7*3
