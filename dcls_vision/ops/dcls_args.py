"""Constructor-argument checks of the DCLS layers: each bad value raises one line naming it and what is allowed.

Kept apart from :mod:`.dcls` so the layer reads as set-up, kernel and forward; the rules here (ints or
tuples of ints, counts >= 1, groups dividing the channels, known padding modes, default ``same`` padding)
are the same for every variant.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PADDING_MODES", "check_counts", "check_learned_axes", "int_tuple", "positive", "resolve_padding"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def int_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``value`` as a tuple of ``n`` ints (an int is repeated); bools and other types are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)):
        raise TypeError(f"{name}={value!r} must be an int or a tuple of {n} ints")
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name}={value!r} must be an int or a tuple of {n} ints")
    return out


def positive(values: tuple[int, ...], name: str, raw: object) -> tuple[int, ...]:
    """``values`` unchanged if all are >= 1; ``raw`` is what the user passed, quoted in the error."""
    if any(v < 1 for v in values):
        raise ValueError(f"{name}={raw!r} is invalid; allowed: integers >= 1")
    return values


def check_counts(in_channels: int, out_channels: int, kernel_count: int, groups: int, padding_mode: str) -> None:
    """Channel and element counts are integers >= 1, groups divide the channels, the padding mode is known."""
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_count", kernel_count),
        ("groups", groups),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; allowed: integers >= 1")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} is not supported; allowed: {', '.join(PADDING_MODES)}")


def check_learned_axes(learned_axes: Sequence[int] | None, n_dims: int, n_learned: int) -> tuple[int, ...]:
    """The learned axes (default the first ``n_learned``): distinct, increasing, within the ``n_dims`` axes."""
    axes = tuple(range(n_learned)) if learned_axes is None else tuple(learned_axes)
    if (
        len(axes) != n_learned
        or len(set(axes)) != n_learned
        or list(axes) != sorted(axes)
        or not all(0 <= a < n_dims for a in axes)
    ):
        raise ValueError(
            f"learned_axes={learned_axes!r} is invalid; allowed: {n_learned} distinct increasing axes "
            f"in [0, {n_dims - 1}]"
        )
    return axes


def resolve_padding(
    padding: int | Sequence[int] | str | None, kernel_size: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """Per-axis (before, after) padding; the default centres the output on the kernel centre."""
    if padding is None or padding == "same":
        return tuple((s // 2, s - 1 - s // 2) for s in kernel_size)
    if padding == "valid":
        return ((0, 0),) * len(kernel_size)
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r} is not supported; allowed: None, 'same', 'valid', int or tuple")
    values = int_tuple(padding, len(kernel_size), "padding")
    if any(v < 0 for v in values):
        raise ValueError(f"padding={padding!r} is invalid; allowed: integers >= 0")
    return tuple((v, v) for v in values)
