"""What every analysis tool shares: a one-line-error argument parser, model arguments, JSON + PNG output."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dcls_vision.utils.errors import EXIT_USER_ERROR, run_cli


class Parser(argparse.ArgumentParser):
    """argparse with errors as one line (``prog: error: ...``, exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def make_parser(prog: str, doc: str | None) -> Parser:
    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """``--model``/``--models`` (timm names, ``name:key=value,...``), ``--checkpoint`` and ``--ema``."""
    if many:
        parser.add_argument(
            "--models",
            nargs="+",
            default=None,
            metavar="NAME",
            help="timm model names (DCLS variants registered), optionally name:key=value,...",
        )
    else:
        parser.add_argument(
            "--model",
            default=None,
            metavar="NAME",
            help="timm model name (optionally name:key=value,...), used when no --checkpoint",
        )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint or run dir: ours (the model is rebuilt from its stored config), a release, a state dict "
        "or .safetensors (then give --checkpoint-model)",
    )
    add_checkpoint_model_arg(parser)
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")


def add_checkpoint_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-model",
        default=None,
        metavar="NAME",
        help="timm model (name:key=value,...) of a --checkpoint that stores no run config (a state dict, "
        ".safetensors); default: --model",
    )


def add_out_arg(parser: argparse.ArgumentParser, tool: str) -> None:
    parser.add_argument(
        "--out",
        default=f"outputs/analysis/{tool}",
        metavar="DIR",
        help="output directory for the PNG and JSON files (default: %(default)s)",
    )


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid; allowed: an integer >= 1")
    return n


def non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid; allowed: an integer >= 0")
    return n


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, Paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null|true|false)(?:,\s*(?:-?[\d.eE+-]+|null|true|false))*)\s*\]")


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON with lists of plain numbers kept on one line (histograms stay readable)."""
    text = json.dumps(_clean(result), indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def write_json(result: dict[str, Any], out_dir: Path, name: str) -> Path:
    """Write ``result`` to ``out_dir/name`` and print it on stdout (the tools' machine-readable output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    text = dumps(result)
    path.write_text(text + "\n")
    print(text, flush=True)
    return path


def run_tool(
    main: Callable[[argparse.Namespace], dict[str, Any]], parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> dict[str, Any]:
    """Parse ``argv`` and run ``main``; a :class:`UserError` becomes a one-line error with exit code 2."""
    args = parser.parse_args(argv)
    return run_cli(lambda: main(args), prog=parser.prog)
