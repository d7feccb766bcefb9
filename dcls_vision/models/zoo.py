"""Registered DCLS variants of timm models (filled in by the model-zoo work)."""
