"""Turn an image folder into an ImageNet-C-style folder: OUT/<corruption>/<severity>/<same relative path>.

    python tools/make_corrupted.py SRC OUT [--corruptions common|extra|all|NAME ...] [--severities 1 2 3 4 5]
                                   [--workers N] [--seed 0] [--format jpeg|png] [--upscale-small 32]

SRC is any folder of images, usually ImageNet-style (SRC/<wnid>/*.JPEG), whose sub-folders are kept. The
corruptions are those of ImageNet-C (Hendrycks & Dietterich 2019) as implemented by ``imagecorruptions-imaug``
(the 15 test corruptions + 4 extra ones, severities 1-5). Each output depends only on (seed, corruption, severity,
relative path), so the folder is identical whatever the number of workers and order of work; files that already
exist are kept (re-run to resume) unless --overwrite. Images narrower or shorter than 32 px stop the run unless
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

import numpy as np
from PIL import Image, UnidentifiedImageError

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
          "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
GROUPS = {"common": COMMON, "extra": EXTRA, "all": COMMON + EXTRA}
SEEDED_KWARG = ("impulse_noise", "glass_blur")  # take an explicit seed; the others draw from np.random
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_SIZE = 32  # imagecorruptions refuses smaller images
INSTALL_HINT = ("pip install opencv-python-headless==5.0.0.93 numba==0.68.1 scikit-image==0.26.0 scipy==1.17.1 && "
                "pip install --no-deps imagecorruptions-imaug==1.1.5")


class TooSmall(ValueError):
    """An input image under 32 px without --upscale-small."""


def corruption_names(values: Sequence[str]) -> list[str]:
    """Expand group names (common, extra, all) and check the rest; keeps the order, drops duplicates."""
    names: list[str] = []
    for value in values:
        for name in GROUPS.get(value, (value,)):
            if name not in GROUPS["all"]:
                raise argparse.ArgumentTypeError(
                    f"--corruptions {value!r} is not supported; allowed: common, extra, all or any of "
                    f"{', '.join(GROUPS['all'])}")
            if name not in names:
                names.append(name)
    return names


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


def _load(path: Path, upscale: int | None) -> np.ndarray:
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    if min(w, h) < MIN_SIZE:
        if upscale is None:
            raise TooSmall(f"{path} is {w}x{h} px; imagecorruptions needs at least {MIN_SIZE}x{MIN_SIZE}; pass "
                           f"--upscale-small {MIN_SIZE} (or larger) to upscale small images first")
        scale = upscale / min(w, h)
        img = img.resize((max(upscale, round(w * scale)), max(upscale, round(h * scale))), Image.Resampling.BICUBIC)
    return np.asarray(img)


def corrupt_image(img: np.ndarray, corruption: str, severity: int, seed: int) -> tuple[np.ndarray, bool]:
    """One seeded corruption; returns (image, dry) where ``dry`` flags a spatter that drew no liquid.

    imagecorruptions' spatter (severities 1-3) divides its liquid mask by the mask's maximum; on small images the
    mask can be all zero and 0/0 turns the whole picture into NaN (stored as black). A zero mask means no spatter,
    so the image is kept unchanged instead.
    """
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


def process_chunk(src: str, out: str, rels: list[str], corruptions: list[str], severities: list[int], seed: int,
                  fmt: str, quality: int, upscale: int | None, overwrite: bool) -> tuple[int, int, list[str], int]:
    """Corrupt ``rels`` (relative paths) at every corruption x severity; returns (written, kept, unreadable, dry)."""
    written = kept = dry = 0
    bad: list[str] = []
    for rel in rels:
        targets = [(c, s, Path(out, c, str(s), output_name(Path(rel), fmt))) for c in corruptions for s in severities]
        todo = targets if overwrite else [t for t in targets if not t[2].exists()]
        kept += len(targets) - len(todo)
        if not todo:
            continue
        try:
            img = _load(Path(src, rel), upscale)
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", type=Path, help="input image folder (e.g. ImageNet val: SRC/<wnid>/*.JPEG)")
    p.add_argument("out", type=Path, help="output folder: OUT/<corruption>/<severity>/<relative path>")
    p.add_argument("--corruptions", nargs="+", default=["common"],
                   help="names, or groups: common (the 15 of ImageNet-C), extra (speckle_noise, gaussian_blur, "
                        "spatter, saturate), all")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="severities in 1..5")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--seed", type=int, default=0, help="base seed (outputs depend on seed, corruption, severity, file)")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg",
                   help="output format: jpeg (quality --quality, as ImageNet-C) or png (lossless)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality (ImageNet-C used 85)")
    p.add_argument("--upscale-small", type=int, default=None, metavar="N",
                   help=f"upscale images with a side under {MIN_SIZE} px so the shorter side is N (>= {MIN_SIZE})")
    p.add_argument("--chunk", type=int, default=64, help="images per task sent to a worker")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if args.upscale_small is not None and args.upscale_small < MIN_SIZE:
        p.error(f"--upscale-small {args.upscale_small} is not supported; allowed: an integer >= {MIN_SIZE}")
    if not 1 <= args.quality <= 95:
        p.error(f"--quality {args.quality} is not supported; allowed: 1 to 95")
    if args.chunk < 1:
        p.error(f"--chunk {args.chunk} is not supported; allowed: an integer >= 1")
    if not args.src.is_dir():
        p.error(f"src {str(args.src)!r} is not a folder; allowed: a folder of images (e.g. SRC/<class>/*.JPEG)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import imagecorruptions  # noqa: F401
    except ImportError as err:
        print(f"make_corrupted: imagecorruptions is not importable ({err}); install it with: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    rels = [str(r) for r in find_images(args.src)]
    if not rels:
        print(f"make_corrupted: no images under {args.src} (suffixes {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
        return 2
    total = len(rels) * len(args.corruptions) * len(args.severities)
    print(f"{len(rels)} images x {len(args.corruptions)} corruptions x {len(args.severities)} severities = {total} "
          f"outputs -> {args.out} ({args.workers} worker(s))", flush=True)
    common = (str(args.src), str(args.out))
    opts = (args.corruptions, args.severities, args.seed, args.format, args.quality, args.upscale_small,
            args.overwrite)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rels), unit="img", disable=args.no_progress, dynamic_ncols=True)
    written = kept = dry = 0
    bad: list[str] = []
    try:
        if args.workers == 1:
            for chunk in _chunks(rels, args.chunk):
                w, k, b, d = process_chunk(*common, chunk, *opts)
                written, kept, bad, dry = written + w, kept + k, bad + b, dry + d
                bar.update(len(chunk))
        else:
            # fork: workers inherit the imported modules; numba compiles glass_blur once per worker
            with ProcessPoolExecutor(args.workers, mp_context=get_context("fork")) as pool:
                futures = {pool.submit(process_chunk, *common, chunk, *opts): len(chunk)
                           for chunk in _chunks(rels, args.chunk)}
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
