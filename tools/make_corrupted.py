"""Turn an image folder into an ImageNet-C or ImageNet-C-bar style folder: OUT/<corruption>/<severity>/<same path>.

    python tools/make_corrupted.py SRC OUT [--corruptions common|extra|all|cbar|NAME ...] [--severities 1 2 3 4 5]
                                   [--workers N] [--seed 0] [--format jpeg|png] [--no-resize-crop]
                                   [--upscale-small 32]

SRC is any folder of images, usually ImageNet-style (SRC/<wnid>/*.JPEG), whose sub-folders are kept. As ImageNet-C
and -C-bar were made, each image is first resized (shorter side 256, bilinear) and centre-cropped to 224x224: the
corruption parameters are in pixels of that crop. --no-resize-crop corrupts the images at their own size (small
images such as the Fashion-MNIST demo). Corruptions: those of ImageNet-C (Hendrycks & Dietterich 2019) as
implemented by ``imagecorruptions-imaug`` (the 15 test ones + 4 extra, severities 1-5, folders ``1``..``5``), or
``cbar``: ImageNet-C-bar's 10 (Mintun et al. 2021, :mod:`dcls_vision.robustness.cbar`) at the released severity
parameters, folders named by the parameter as the release (``blue_noise_sample/0.80``); one OUT holds one of the
two benchmarks. Each output depends only on (seed, corruption, severity, relative path), so the folder is identical
whatever the number of workers and order of work; files that already exist are kept (re-run to resume) unless
--overwrite. With --no-resize-crop, ImageNet-C corruptions need 32 px: smaller images stop the run unless
--upscale-small N resizes them (bicubic) so the shorter side is N. Unreadable images are skipped and counted.
Exit codes: 0 done, 1 some images could not be read, 2 bad arguments / images too small.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dcls_vision.robustness.benchmarks import IMAGENET_C as COMMON
from dcls_vision.robustness.benchmarks import IMAGENET_C_BAR as CBAR
from dcls_vision.robustness.benchmarks import IMAGENET_C_EXTRA as EXTRA

GROUPS = {"common": COMMON, "extra": EXTRA, "all": COMMON + EXTRA, "cbar": CBAR}
KNOWN = COMMON + EXTRA + CBAR
RESIZE, CROP = 256, 224  # ImageNet-C / -C-bar: Resize(256) then CenterCrop(224) before corrupting
SEEDED_KWARG = ("impulse_noise", "glass_blur")  # take an explicit seed; the others draw from np.random
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_SIZE = 32  # imagecorruptions refuses smaller images
INSTALL_HINT = (
    "pip install opencv-python-headless==5.0.0.93 numba==0.68.1 scikit-image==0.26.0 scipy==1.17.1 && "
    "pip install --no-deps imagecorruptions-imaug==1.1.5"
)


class TooSmall(ValueError):
    """An input image under 32 px without --upscale-small."""


def corruption_names(values: Sequence[str]) -> list[str]:
    """Expand group names (common, extra, all) and check the rest; keeps the order, drops duplicates."""
    names: list[str] = []
    for value in values:
        for name in GROUPS.get(value, (value,)):
            if name not in KNOWN:
                raise argparse.ArgumentTypeError(
                    f"--corruptions {value!r} is not supported; allowed: common, extra, all, cbar or any of "
                    f"{', '.join(KNOWN)}"
                )
            if name not in names:
                names.append(name)
    if any(n in CBAR for n in names) and any(n not in CBAR for n in names):
        raise argparse.ArgumentTypeError(
            f"--corruptions {' '.join(values)} mixes ImageNet-C and ImageNet-C-bar corruptions; allowed: one of the "
            f"two per OUT folder (eval.py reads them as c.root and cbar.root)"
        )
    return names


def severity_folder(corruption: str, severity: int) -> str:
    """``3`` for ImageNet-C; the released parameter for C-bar (``blue_noise_sample`` 3 -> ``2.40``)."""
    if corruption in CBAR:
        from dcls_vision.robustness.benchmarks import CBAR_SEVERITY_PARAMS

        return f"{CBAR_SEVERITY_PARAMS[corruption][severity - 1]:.2f}"
    return str(severity)


def image_seed(seed: int, corruption: str, severity: int, rel: str) -> int:
    """A 32-bit seed from (seed, corruption, severity, relative path): independent of workers and order."""
    return zlib.crc32(f"{seed}|{corruption}|{severity}|{rel}".encode()) & 0xFFFFFFFF


def output_name(rel: Path, fmt: str) -> Path:
    if fmt == "png":
        return rel.with_suffix(".png")
    return rel if rel.suffix.lower() in (".jpg", ".jpeg") else rel.with_suffix(".jpg")


def find_images(src: Path) -> list[Path]:
    """Image files under ``src`` (recursive, sorted, relative to ``src``; hidden files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath, name).relative_to(src))
    return found


def _save(img: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "png":
            Image.fromarray(img).save(tmp, format="PNG")
        else:
            Image.fromarray(img).save(tmp, format="JPEG", quality=quality, optimize=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resize_crop(img: Image.Image) -> Image.Image:
    """Shorter side to 256 (bilinear), centre crop 224x224: torchvision's Resize(256) + CenterCrop(224)."""
    w, h = img.size
    scale = RESIZE / min(w, h)
    nw, nh = (RESIZE, max(RESIZE, int(h * scale))) if w <= h else (max(RESIZE, int(w * scale)), RESIZE)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = int(round((nw - CROP) / 2.0)), int(round((nh - CROP) / 2.0))
    return img.crop((left, top, left + CROP, top + CROP))


def _load(path: Path, upscale: int | None, crop: bool = True, min_size: int = MIN_SIZE) -> np.ndarray:
    with Image.open(path) as im:
        img = im.convert("RGB")
    if crop:
        return np.asarray(resize_crop(img))
    w, h = img.size
    if min(w, h) < min_size:
        if upscale is None:
            raise TooSmall(
                f"{path} is {w}x{h} px; imagecorruptions needs at least {MIN_SIZE}x{MIN_SIZE}; pass "
                f"--upscale-small {MIN_SIZE} (or larger) to upscale small images first"
            )
        scale = upscale / min(w, h)
        img = img.resize((max(upscale, round(w * scale)), max(upscale, round(h * scale))), Image.Resampling.BICUBIC)
    return np.asarray(img)


def corrupt_image(img: np.ndarray, corruption: str, severity: int, seed: int) -> tuple[np.ndarray, bool]:
    """One seeded corruption; returns (image, dry) where ``dry`` flags a spatter that drew no liquid.

    C-bar corruptions run at the released parameter of ``severity`` (1..5).

    imagecorruptions' spatter (severities 1-3) divides its liquid mask by the mask's maximum; on small images the
    mask can be all zero and 0/0 turns the whole picture into NaN (stored as black). A zero mask means no spatter,
    so the image is kept unchanged instead.
    """
    if corruption in CBAR:
        from dcls_vision.robustness.benchmarks import CBAR_SEVERITY_PARAMS
        from dcls_vision.robustness.cbar import corrupt_cbar

        return corrupt_cbar(img, corruption, CBAR_SEVERITY_PARAMS[corruption][severity - 1], seed), False
    from imagecorruptions import corrupt

    np.random.seed(seed)
    kwargs = {"seed": seed} if corruption in SEEDED_KWARG else {}
    if corruption != "spatter":
        return corrupt(img, severity=severity, corruption_name=corruption, **kwargs), False
    try:
        with np.errstate(invalid="raise"):
            return corrupt(img, severity=severity, corruption_name=corruption), False
    except FloatingPointError:
        return img.copy(), True


def process_chunk(
    src: str,
    out: str,
    rels: list[str],
    corruptions: list[str],
    severities: list[int],
    seed: int,
    fmt: str,
    quality: int,
    upscale: int | None,
    overwrite: bool,
    crop: bool = True,
) -> tuple[int, int, list[str], int]:
    """Corrupt ``rels`` (relative paths) at every corruption x severity; returns (written, kept, unreadable, dry)."""
    written = kept = dry = 0
    bad: list[str] = []
    min_size = MIN_SIZE if any(c not in CBAR for c in corruptions) else 1
    for rel in rels:
        targets = [
            (c, s, Path(out, c, severity_folder(c, s), output_name(Path(rel), fmt)))
            for c in corruptions
            for s in severities
        ]
        todo = targets if overwrite else [t for t in targets if not t[2].exists()]
        kept += len(targets) - len(todo)
        if not todo:
            continue
        try:
            img = _load(Path(src, rel), upscale, crop, min_size)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if isinstance(err, TooSmall):
                raise
            bad.append(f"{rel} ({type(err).__name__}: {err})")
            continue
        for corruption, severity, path in todo:
            result, was_dry = corrupt_image(img, corruption, severity, image_seed(seed, corruption, severity, rel))
            _save(result, path, fmt, quality)
            written, dry = written + 1, dry + was_dry
    return written, kept, bad, dry


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("src", type=Path, help="input image folder (e.g. ImageNet val: SRC/<wnid>/*.JPEG)")
    p.add_argument("out", type=Path, help="output folder: OUT/<corruption>/<severity>/<relative path>")
    p.add_argument(
        "--corruptions",
        nargs="+",
        default=["common"],
        help="names, or groups: common (the 15 of ImageNet-C), extra (speckle_noise, gaussian_blur, "
        "spatter, saturate), all, cbar (the 10 of ImageNet-C-bar; not mixed with the others)",
    )
    p.add_argument(
        "--no-resize-crop",
        dest="resize_crop",
        action="store_false",
        help="corrupt images at their own size instead of resizing to 256 and centre-cropping 224 "
        "(the ImageNet-C/-C-bar protocol); for small-image sets such as Fashion-MNIST",
    )
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="severities in 1..5")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--seed", type=int, default=0, help="base seed (outputs depend on seed, corruption, severity, file)")
    p.add_argument(
        "--format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="output format: jpeg (quality --quality, as ImageNet-C) or png (lossless)",
    )
    p.add_argument("--quality", type=int, default=85, help="JPEG quality (ImageNet-C used 85)")
    p.add_argument(
        "--upscale-small",
        type=int,
        default=None,
        metavar="N",
        help=f"with --no-resize-crop: upscale images with a side under {MIN_SIZE} px so the shorter side "
        f"is N (>= {MIN_SIZE}); ImageNet-C's corruptions need {MIN_SIZE} px",
    )
    p.add_argument("--chunk", type=int, default=64, help="images per task sent to a worker")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, checked: any bad value ends here with one ``usage``/``error`` message and exit code 2."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        args.corruptions = corruption_names(args.corruptions)
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    bad = [s for s in args.severities if s not in (1, 2, 3, 4, 5)]
    if bad:
        p.error(f"--severities {bad[0]} is not supported; allowed: integers 1 to 5")
    args.severities = sorted(set(args.severities))
    if args.workers < 1:
        p.error(f"--workers {args.workers} is not supported; allowed: an integer >= 1")
    if args.upscale_small is not None and args.resize_crop:
        p.error(
            f"--upscale-small {args.upscale_small} is not supported without --no-resize-crop; allowed: "
            f"--no-resize-crop --upscale-small N (the default resize to {RESIZE} / crop {CROP} needs no upscaling)"
        )
    if args.upscale_small is not None and args.upscale_small < MIN_SIZE:
        p.error(f"--upscale-small {args.upscale_small} is not supported; allowed: an integer >= {MIN_SIZE}")
    if not 1 <= args.quality <= 95:
        p.error(f"--quality {args.quality} is not supported; allowed: 1 to 95")
    if args.chunk < 1:
        p.error(f"--chunk {args.chunk} is not supported; allowed: an integer >= 1")
    if not args.src.is_dir():
        p.error(f"src {str(args.src)!r} is not a folder; allowed: a folder of images (e.g. SRC/<class>/*.JPEG)")
    return args


def _process(args: argparse.Namespace, rels: list[str], bar: Any) -> tuple[int, int, list[str], int]:
    """Corrupt every image (in-process or in forked workers): counts written, kept, unreadable, dry spatter."""
    common = (str(args.src), str(args.out))
    opts = (
        args.corruptions,
        args.severities,
        args.seed,
        args.format,
        args.quality,
        args.upscale_small,
        args.overwrite,
        args.resize_crop,
    )
    written = kept = dry = 0
    bad: list[str] = []
    if args.workers == 1:
        for chunk in _chunks(rels, args.chunk):
            w, k, b, d = process_chunk(*common, chunk, *opts)
            written, kept, bad, dry = written + w, kept + k, bad + b, dry + d
            bar.update(len(chunk))
        return written, kept, bad, dry
    # fork: workers inherit the imported modules; numba compiles glass_blur once per worker
    with ProcessPoolExecutor(args.workers, mp_context=get_context("fork")) as pool:
        futures = {pool.submit(process_chunk, *common, chunk, *opts): len(chunk) for chunk in _chunks(rels, args.chunk)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:  # e.g. a worker's TooSmall: stop queued chunks too
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
                w, k, b, d = fut.result()
                written, kept, bad, dry = written + w, kept + k, bad + b, dry + d
                bar.update(futures[fut])
    return written, kept, bad, dry


def _missing_package(corruptions: Sequence[str]) -> str | None:
    """Why the corruption code cannot be imported (with how to fix it), or None when it can."""
    try:
        if any(c not in CBAR for c in corruptions):
            import imagecorruptions  # noqa: F401
        else:
            import dcls_vision.robustness.cbar  # noqa: F401
    except ImportError as err:
        hint = (
            INSTALL_HINT
            if "imagecorruptions" in str(err)
            else "run from the repository root with dcls_vision importable (PYTHONPATH=. or pip install -e .)"
        )
        return f"{err}; {hint}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = _missing_package(args.corruptions)
    if missing:
        print(f"make_corrupted: {missing}", file=sys.stderr)
        return 2
    rels = [str(r) for r in find_images(args.src)]
    if not rels:
        print(f"make_corrupted: no images under {args.src} (suffixes {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
        return 2
    total = len(rels) * len(args.corruptions) * len(args.severities)
    size = f"resized to {RESIZE} and centre-cropped to {CROP}" if args.resize_crop else "at their own size"
    print(
        f"{len(rels)} images ({size}) x {len(args.corruptions)} corruptions x {len(args.severities)} severities = "
        f"{total} outputs -> {args.out} ({args.workers} worker(s))",
        flush=True,
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rels), unit="img", disable=args.no_progress, dynamic_ncols=True)
    try:
        written, kept, bad, dry = _process(args, rels, bar)
    except TooSmall as err:
        bar.close()
        print(f"make_corrupted: {err}", file=sys.stderr)
        return 2
    bar.close()
    if dry:
        print(f"spatter drew no liquid on {dry} image(s) (small images): kept them unchanged")
    for line in bad[:10]:
        print(f"unreadable, skipped: {line}", file=sys.stderr)
    print(f"done: {written} written, {kept} already there, {len(bad)} unreadable image(s) skipped -> {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
