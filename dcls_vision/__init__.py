"""dcls-vision: vision models with Dilated Convolution with Learnable Spacings (DCLS)."""

__version__ = "0.1.0"
