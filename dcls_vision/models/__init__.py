"""DCLS models: conversion of timm models and registered variants (importing registers them in timm), and the
model factory (config → model, checkpoint → model)."""

from . import audio, quickstart, snn, zoo  # noqa: F401  (registers the models with timm)
from .checkpoint_formats import ModelLoadError, read_checkpoint
from .factory import LoadedModel, build_model, load_model

__all__ = ["LoadedModel", "ModelLoadError", "build_model", "load_model", "read_checkpoint"]
