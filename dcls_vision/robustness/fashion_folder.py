"""Write the Fashion-MNIST val split a checkpoint was validated on as an ImageNet-style folder of PNGs.

``python -m dcls_vision.robustness.fashion_folder OUT --checkpoint RUN/best.pth`` (or ``--val-subset N``) writes
``OUT/<class>/<index>.png``: the original 28x28 grey pixels, lossless, class folders named as
:func:`~dcls_vision.robustness.classes.fashion_mnist_classes`. Loaded back with the checkpoint's eval transform the
images give bit-identical input tensors, so eval.py's clean top-1 on this folder equals the trainer's val top-1.
This is the real-data stand-in for ImageNet in the tests and the docs/robustness.md walk-through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from .classes import fashion_mnist_classes


def export_val_folder(data_cfg: Mapping[str, Any], out: Path) -> int:
    """Write the val split of a ``fashion_mnist`` data config (its ``val_subset`` too) to ``out``; returns the count."""
    from dcls_vision.data import build_datasets

    if data_cfg.get("name") != "fashion_mnist":
        raise ValueError(f"data.name={data_cfg.get('name')!r} is not supported here; allowed: fashion_mnist")
    _, val, _ = build_datasets(data_cfg, None)
    names = fashion_mnist_classes()
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(val)):
        pixels, label = val.data[i].numpy(), int(val.targets[i])
        Image.fromarray(pixels).save(out / names[label] / f"{i:05d}.png")
    return len(val)


def _data_cfg(args: argparse.Namespace) -> dict[str, Any]:
    if args.checkpoint:
        from dcls_vision.utils.io import load_checkpoint

        state = load_checkpoint(args.checkpoint)
        if "config" not in state:
            raise ValueError(f"--checkpoint {args.checkpoint}: no stored config; allowed: a .pth written by train.py")
        return dict(state["config"]["data"])
    from omegaconf import OmegaConf

    from dcls_vision.engine.schema import load_option
    from dcls_vision.utils.paths import config_dir

    default = config_dir() / "data" / "fashion_mnist.yaml"
    cfg = OmegaConf.to_container(load_option(default))
    cfg.update({"root": args.data_root, "val_subset": args.val_subset})
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (OUT/<class>/<index>.png)")
    parser.add_argument("--checkpoint", help="take the data config (root, val_subset) from this train.py checkpoint")
    parser.add_argument("--val-subset", type=int, default=None, help="without --checkpoint: N test images (all)")
    parser.add_argument("--data-root", default="data", help="without --checkpoint: Fashion-MNIST cache dir (data.root)")
    args = parser.parse_args(argv)
    try:
        n = export_val_folder(_data_cfg(args), args.out)
    except (ValueError, OSError) as err:
        print(f"fashion_folder: {err}", file=sys.stderr)
        return 2
    print(f"wrote {n} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
