"""The DCLS operator: interpolation, separable kernel construction, layers and export."""

from .dcls import (
    Dcls1d,
    Dcls2_1d,
    Dcls2d,
    Dcls3_1d,
    Dcls3_2d,
    Dcls3d,
    DclsLayer,
)
from .dcls_model import clamp_positions_, convert_to_conv, dcls_layers, dcls_parameters, share_positions
from .interpolation import INTERPOLATIONS

__all__ = [
    "INTERPOLATIONS",
    "Dcls1d",
    "Dcls2_1d",
    "Dcls2d",
    "Dcls3_1d",
    "Dcls3_2d",
    "Dcls3d",
    "DclsLayer",
    "clamp_positions_",
    "convert_to_conv",
    "dcls_layers",
    "dcls_parameters",
    "share_positions",
]
