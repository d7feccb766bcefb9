"""Analysis and deployment helpers behind ``tools/``: FLOPs and parameters, throughput and peak memory,
receptive fields, learned-position statistics, effective receptive fields and export.

Submodules import their heavy dependencies (matplotlib, onnx, onnxruntime) lazily, so importing one
piece does not pull in the others.
"""
