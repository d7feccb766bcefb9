"""The robustness benchmarks of the thesis' Table 2.5: names, folder layouts, corruption lists, AlexNet errors.

Folder layouts (``<wnid>`` = class folder, named as the checkpoint's classes):

- ImageNet val and ImageNet-Sketch: ``<root>/<wnid>/*`` (1000 classes);
- ImageNet-A and ImageNet-R: ``<root>/<wnid>/*`` over their 200-class subsets;
- ImageNet-C and ImageNet-C-bar: ``<root>/<corruption>/<severity>/<wnid>/*`` with severities 1..5 (C-bar as
  released by ``make_imagenet_c_bar.py`` names the severity folders by the corruption parameter, e.g. ``0.80``;
  both namings are accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = (1, 2, 3, 4, 5)

# Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
# (ICLR 2019): the 15 test corruptions, then the 4 held-out validation ones (imagecorruptions' order).
IMAGENET_C = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

# Mintun, Kirillov & Xie, "On Interaction Between Augmentations and Corruptions in Natural Corruption
# Robustness" (NeurIPS 2021): ImageNet-C-bar's 10 corruptions and the parameter of each severity 1..5, as in
# facebookresearch/augmentation-corruption imagenet_c_bar/imagenet_c_bar.csv (folder names use "{:.2f}").
CBAR_SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "blue_noise_sample": (0.8, 1.6, 2.4, 4.0, 5.6),
    "brownish_noise": (1.0, 2.0, 3.0, 4.0, 5.0),
    "caustic_refraction": (2.35, 3.2, 4.9, 6.6, 9.15),
    "checkerboard_cutout": (2.0, 3.0, 4.0, 5.0, 6.0),
    "cocentric_sine_waves": (3.0, 5.0, 8.0, 9.0, 10.0),
    "inverse_sparkles": (1.0, 2.0, 4.0, 9.0, 10.0),
    "perlin_noise": (4.6, 5.2, 5.8, 7.6, 8.8),
    "plasma_noise": (4.75, 7.0, 8.5, 9.25, 10.0),
    "single_frequency_greyscale": (1.0, 1.5, 2.0, 4.5, 5.0),
    "sparkles": (1.0, 2.0, 3.0, 5.0, 6.0),
}
IMAGENET_C_BAR = tuple(CBAR_SEVERITY_PARAMS)

# AlexNet top-1 error (fraction) on ImageNet-C per corruption and severity 1..5, the mCE normaliser:
# CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}, mCE = mean_c CE_c (Hendrycks & Dietterich 2019, section 3).
# Per-severity values: the "Calculating the mCE" spreadsheet linked from github.com/hendrycks/robustness
# (README), as transcribed in timm-derived validate scripts (``imagenetc_alexnet_error_rates_list``). Their
# severity means are the per-corruption AlexNet errors of google-research/augmix imagenet.py (``ALEXNET_ERR``,
# "Raw AlexNet errors taken from https://github.com/hendrycks/robustness"): 0.886428, 0.894468, ... (checked
# by tests/test_eval.py).
ALEXNET_ERRORS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
# AlexNet's clean ImageNet val top-1 error (fraction), the relative mCE normaliser's clean term (Hendrycks &
# Dietterich 2019, section 3: Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)).
ALEXNET_CLEAN_ERROR = 0.4348


@dataclass(frozen=True)
class Benchmark:
    """One column of Table 2.5: its config key, display names and folder layout."""

    key: str
    title: str
    column: str
    layout: str
    corrupted: bool = False  # <root>/<corruption>/<severity>/<wnid>/*
    subset: str | None = None  # timm's 200-class subset name ("imagenet_a", "imagenet_r")
    lower_is_better: bool = False


BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        Benchmark("val", "ImageNet val", "Clean", "<root>/<wnid>/*"),
        Benchmark(
            "c", "ImageNet-C", "C↓", "<root>/<corruption>/<severity>/<wnid>/*", corrupted=True, lower_is_better=True
        ),
        Benchmark(
            "cbar",
            "ImageNet-C-bar",
            "C-bar↓",
            "<root>/<corruption>/<severity>/<wnid>/*",
            corrupted=True,
            lower_is_better=True,
        ),
        Benchmark("a", "ImageNet-A", "A", "<root>/<wnid>/* (200 classes)", subset="imagenet_a"),
        Benchmark("r", "ImageNet-R", "R", "<root>/<wnid>/* (200 classes)", subset="imagenet_r"),
        Benchmark("sketch", "ImageNet-Sketch", "SK", "<root>/<wnid>/*"),
    )
}


def allowed_corruptions(key: str) -> tuple[str, ...]:
    """Corruption names a corrupted benchmark accepts (ImageNet-C: the 15 + the 4 extra ones)."""
    return IMAGENET_C + IMAGENET_C_EXTRA if key == "c" else IMAGENET_C_BAR


def severity_folder_names(key: str, corruption: str, severity: int) -> tuple[str, ...]:
    """Folder names that hold ``severity`` (1..5) of ``corruption``: "3", and for C-bar also its parameter."""
    names = [str(severity)]
    if key == "cbar" and corruption in CBAR_SEVERITY_PARAMS:
        names.append(f"{CBAR_SEVERITY_PARAMS[corruption][severity - 1]:.2f}")
    return tuple(names)


# Size of each released benchmark (images, classes); C and C-bar: per corruption x severity split (ImageNet val).
FULL_SIZES: dict[str, tuple[int, int]] = {
    "val": (50_000, 1000),
    "c": (50_000, 1000),
    "cbar": (50_000, 1000),
    "a": (7_500, 200),
    "r": (30_000, 200),
    "sketch": (50_889, 1000),
}


def coverage_note(key: str, images: tuple[int, int], classes: tuple[int, int]) -> str | None:
    """One line when a folder's (min, max) image / class counts differ from the released benchmark's, else None.

    Not an error: subsets and small demo data are legitimate, but their figures are not the published benchmark's.
    """
    full_images, full_classes = FULL_SIZES[key]
    if images == (full_images, full_images) and classes == (full_classes, full_classes):
        return None

    def span(lo: int, hi: int) -> str:
        return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"

    per = " per split" if BENCHMARKS[key].corrupted else ""
    return (
        f"coverage: {BENCHMARKS[key].title} has {span(*images)} images in {span(*classes)} classes{per} here, "
        f"the released benchmark {full_images:,} in {full_classes:,}; fine for a subset or a demo, but the "
        f"figure is not comparable with published ones"
    )
