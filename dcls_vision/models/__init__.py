"""DCLS models: conversion of timm models and registered variants (importing registers them in timm)."""

from . import quickstart, zoo  # noqa: F401  (registers the models with timm)
