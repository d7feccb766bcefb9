"""Deployment exports of a (DCLS) model, each checked against the model's own logits.

* ``conv``: every DCLS layer replaced by the equivalent plain convolution (its constructed dense kernel,
  :func:`~dcls_vision.ops.convert_to_conv`); saved as a ``weights_only``-loadable state dict. For the
  registered timm variants its keys are those of the timm base model built with the dilated kernel size
  (e.g. ``convnext_tiny`` with ``kernel_sizes=17``).
* ``torchscript``: ``torch.jit.trace`` of the plain-convolution model (deprecated by PyTorch in favour of
  torch.export, still what many runtimes load).
* ``onnx``: ``torch.onnx.export`` of the plain-convolution model with a dynamic batch axis, by the
  torch.export-based exporter (``dynamo``, needs onnxscript) or the legacy TorchScript one; run with
  onnxruntime when it is installed.

Every artefact is re-loaded from disk and run on a batch of a different size than the one used to trace,
so a baked-in batch size would show up as an error.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcls_vision.ops import convert_to_conv
from dcls_vision.utils.io import atomic_save, load_checkpoint

from .errors import AnalysisError

FORMATS = ("conv", "torchscript", "onnx")
ONNX_EXPORTERS = ("dynamo", "torchscript")


def _diff(reference: Tensor, other: Tensor) -> dict[str, float]:
    if reference.shape != other.shape:
        return {"max_abs_diff": float("inf"), "shape": list(other.shape)}
    d = (reference.float() - other.float()).abs()
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "same_argmax": bool((reference.argmax(-1) == other.argmax(-1)).all()),
    }


def export_conv(model: nn.Module, path: Path) -> nn.Module:
    """The plain-convolution copy of ``model`` (eval); its state dict is saved to ``path``."""
    plain = convert_to_conv(copy.deepcopy(model).eval())
    atomic_save(plain.state_dict(), path)
    return plain


def export_torchscript(plain: nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
        traced = torch.jit.trace(plain, example, check_trace=False)
        traced.save(str(path))


def export_onnx(
    plain: nn.Module, example: Tensor, path: Path, exporter: str = "dynamo", opset: int | None = None
) -> None:
    if exporter not in ONNX_EXPORTERS:
        raise AnalysisError(f"--onnx-exporter {exporter!r} is not supported; allowed: {', '.join(ONNX_EXPORTERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError as e:
                raise AnalysisError(
                    "--onnx-exporter dynamo needs the onnxscript package; allowed: pip install "
                    "onnxscript, or --onnx-exporter torchscript"
                ) from e
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                plain,
                (example,),
                str(path),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        else:
            torch.onnx.export(
                plain,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset or 17,
            )


def run_onnx(path: Path, x: Tensor) -> Tensor | None:
    """Logits from onnxruntime (CPU), or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@torch.no_grad()
def _onnx_entry(
    plain: nn.Module, example: Tensor, check: Tensor, reference: Tensor, out_dir: Path, exporter: str, opset: int | None
) -> dict[str, Any]:
    """Export to ONNX and, where onnxruntime is installed, compare its logits with ``reference``."""
    t0 = time.perf_counter()
    path = out_dir / "model.onnx"
    export_onnx(plain, example, path, exporter, opset)
    entry: dict[str, Any] = {"file": str(path), "exporter": exporter}
    logits = run_onnx(path, check)
    if logits is None:
        entry["runtime"] = "onnxruntime not installed: exported, not run"
    else:
        import onnxruntime

        entry.update(runtime=f"onnxruntime {onnxruntime.__version__}", **_diff(reference, logits))
    entry["seconds"] = time.perf_counter() - t0
    return entry


def export_and_verify(
    model: nn.Module,
    example: Tensor,
    check: Tensor,
    out_dir: Path,
    formats: tuple[str, ...] = FORMATS,
    onnx_exporter: str = "dynamo",
    opset: int | None = None,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``model`` (traced on ``example``) to ``formats`` under ``out_dir``; compare logits on ``check``."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise AnalysisError(f"--formats {bad} not supported; allowed: {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    reference = model(check)
    results: dict[str, Any] = {
        "check_batch": check.shape[0],
        "trace_batch": example.shape[0],
        "atol": atol,
        "formats": {},
    }
    t0 = time.perf_counter()
    plain = export_conv(model, out_dir / "model_conv.pth")
    state = load_checkpoint(out_dir / "model_conv.pth")
    reloaded = copy.deepcopy(plain)
    reloaded.load_state_dict(state)
    results["formats"]["conv"] = {
        "file": str(out_dir / "model_conv.pth"),
        **_diff(reference, reloaded(check)),
        "seconds": time.perf_counter() - t0,
    }
    if "torchscript" in formats:
        t0 = time.perf_counter()
        path = out_dir / "model.ts"
        export_torchscript(plain, example, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path))
        results["formats"]["torchscript"] = {
            "file": str(path),
            **_diff(reference, loaded(check)),
            "seconds": time.perf_counter() - t0,
        }
    if "onnx" in formats:
        results["formats"]["onnx"] = _onnx_entry(plain, example, check, reference, out_dir, onnx_exporter, opset)
    if "conv" not in formats:
        (out_dir / "model_conv.pth").unlink()
        del results["formats"]["conv"]
    checked = [v for v in results["formats"].values() if "max_abs_diff" in v]
    results["all_within_atol"] = all(v["max_abs_diff"] <= atol for v in checked)
    return results
