"""ImageNet-C-bar's 10 corruptions (Mintun, Kirillov & Xie, NeurIPS 2021), vectorised with numpy.

Each corruption takes an RGB uint8 image (H, W, 3), its C-bar severity *parameter* (a level on a 0-10 scale, the
values of :data:`~dcls_vision.robustness.benchmarks.CBAR_SEVERITY_PARAMS`, as in the release's
``imagenet_c_bar.csv``) and a ``numpy.random.RandomState``; it returns a new uint8 image of the same shape. The
formulas and parameter ranges follow facebookresearch/augmentation-corruption ``imagenet_c_bar/corrupt.py`` (a
parameter ``float_parameter(level, m)`` there is ``level * m / 10`` here); sizes are relative to ``S = max(H, W)``,
224 for the released 224x224 crops. Random draws come from the given state, so an output depends only on its seed,
not on the release's global ``np.random`` stream: figures are comparable with the release's, images are not
bit-identical. ``perlin_noise`` uses classic Perlin gradient noise and its usual turbulence sum (the release's
generator file is not part of the reference read here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Corruption = Callable[[np.ndarray, float, np.random.RandomState], np.ndarray]
LUMA = np.array([0.2126, 0.7152, 0.0722])


def _param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (y) and column (x) coordinates, float64, shape (h, w)."""
    y, x = np.mgrid[0:h, 0:w]
    return y.astype(np.float64), x.astype(np.float64)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def _spectral_noise(size: int, rng: np.random.RandomState, power: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Real noise (size, size) with unit std whose amplitude spectrum is ``power(distance from the centre)``.

    Phases are uniform and point-symmetric about the centre (so the inverse FFT is real, as in the release).
    """
    y, x = _grid(size, size)
    amplitude = power(np.hypot(x - size / 2, y - size / 2))
    phases = rng.uniform(0, 2 * np.pi, size=(size, size // 2))
    if size % 2 == 0:
        phases = np.concatenate((phases, phases[::-1, ::-1]), axis=1)
    else:
        centre = rng.uniform(0, 2 * np.pi, size=(size // 2, 1))
        centre = np.concatenate((centre, np.zeros((1, 1)), centre[::-1]), axis=0)
        phases = np.concatenate((phases, centre, phases[::-1, ::-1]), axis=1)
    spectrum = np.roll(amplitude * np.exp(1j * phases), (size // 2, size // 2), axis=(0, 1))
    noise = np.real(np.fft.ifft2(spectrum))
    return noise / np.std(noise)


def blue_noise_sample(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Black out the pixels where blue noise (amplitude ~ frequency) is under ``0.3 * level - 2.5`` std."""
    h, w = img.shape[:2]
    seed = rng.randint(0, 2**32, dtype=np.uint64)
    noise = _spectral_noise(max(h, w), np.random.RandomState(seed), lambda r: r)[:h, :w]
    return _to_uint8(img * (noise > _param(level, 3.0) - 2.5)[..., None])


def brownish_noise(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Add per-channel noise with amplitude ~ 1 / (frequency^2 + 1), scaled by ``6.4 * level``."""
    h, w = img.shape[:2]
    state = np.random.RandomState(rng.randint(0, 2**32, dtype=np.uint64))
    size = max(h, w)
    noise = np.stack([_spectral_noise(size, state, lambda r: 1 / (r**2 + 1))[:h, :w] for _ in range(3)], axis=2)
    return _to_uint8(img + _param(level, 64) * noise)


def _caustics(h: int, w: int, time: float, size: float) -> np.ndarray:
    """The release's caustic pattern (a water-surface light texture), values in [0, 1], shape (h, w)."""
    y, x = _grid(h, w)
    p0 = (y / size % 1) * 6.28318530718 - 250
    p1 = (x / size % 1) * 6.28318530718 - 250
    i0, i1, c = p0.copy(), p1.copy(), np.ones_like(p0)
    inten = 0.005
    for n in range(5):
        t = time * (1.0 - 3.5 / (n + 1))
        i0, i1 = p0 + np.cos(t - i0) + np.sin(t + i1), p1 + np.sin(t - i1) + np.cos(t + i0)
        with np.errstate(divide="ignore"):
            c = c + 1.0 / np.sqrt((p0 / (np.sin(i0 + t) / inten)) ** 2 + (p1 / (np.cos(i1 + t) / inten)) ** 2)
    c = 1.17 - (c / 5.0) ** 1.4
    return np.clip(np.abs(c) ** 8.0, 0, 1)


def _bilinear(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``img`` (h, w, 3) at fractional (rows, cols); outside the image counts as 0."""
    h, w = img.shape[:2]
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        return img[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)] * inside[..., None]

    top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
    bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def caustic_refraction(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """View the image through a refracting water surface whose height is a caustic pattern, with its lighting."""
    h, w = img.shape[:2]
    s = max(h, w)
    time, size = rng.uniform(0.5, 2.0), rng.uniform(0.75, 1.25) * s
    eta, lens_scale, lighting = 4.0, _param(level, 0.5 * s), _param(level, 2.0)
    from scipy.ndimage import gaussian_filter

    height = np.pad(gaussian_filter(_caustics(h, w, time, size), sigma=1), 1)  # zeros outside, as the release
    north, south = height[1:-1, :-2], height[1:-1, 2:]  # (row, col - 1), (row, col + 1)
    west, east = height[:-2, 1:-1], height[2:, 1:-1]  # (row - 1, col), (row + 1, col)
    normal = np.stack((east - west, south - north, np.ones((h, w))), axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    # refract the view ray (0, 0, 1) at the surface: Snell's law in the plane of the ray and the normal
    cos_in = normal[..., 2]
    out_angle = np.arcsin(np.sin(np.arccos(np.clip(cos_in, -1, 1))) / eta)
    spectator = np.stack((-normal[..., 1], normal[..., 0], np.zeros((h, w))), axis=-1)
    norm = np.linalg.norm(spectator, axis=-1, keepdims=True)
    spectator = np.divide(spectator, norm, out=np.zeros_like(spectator), where=norm > 0)
    orthogonal = np.cross(normal, spectator)
    ray = np.cos(out_angle)[..., None] * normal + np.sin(out_angle)[..., None] * orthogonal
    ray = np.where((np.abs(cos_in) >= 1.0 - 1e-3)[..., None], np.array([0.0, 0.0, 1.0]), ray)
    ray = np.round(ray * lens_scale, 3)
    y, x = _grid(h, w)
    out = _bilinear(img.astype(np.float64) / 255, y + ray[..., 0], x + ray[..., 1])
    out += ((north - south) * lighting + (east - west) * lighting)[..., None]
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def checkerboard_cutout(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Grey out a random ``level / 10`` fraction of the cells of one colour of a rotated checkerboard."""
    h, w = img.shape[:2]
    s = max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    scale = max(rng.uniform(0.1, 0.25) * s, 1.0)
    state = np.random.RandomState(rng.randint(0, 2**32, dtype=np.uint64))
    cells = int(4 * s // scale)
    grid = state.uniform(size=(cells, cells)) < _param(level, 1.0)
    y, x = _grid(h, w)
    nx = (np.cos(angle) * y + np.sin(angle) * x) / scale
    ny = (-np.sin(angle) * y + np.cos(angle) * x) / scale
    same_parity = np.trunc(nx % 2) == np.trunc(ny % 2)
    cut = same_parity & grid[np.trunc(nx).astype(np.int64), np.trunc(ny).astype(np.int64)]
    out = img.copy()
    out[cut] = 128
    return out


def cocentric_sine_waves(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Add concentric rings, wobbled by a sine of the angle, of amplitude ``12.8 * level``."""
    h, w = img.shape[:2]
    s = max(h, w)
    offset = rng.uniform(0, s, size=2)
    freq, amplitude, ring_width = rng.uniform(0, 10), rng.uniform(0, s / 10), rng.uniform(0, s / 10)
    y, x = _grid(h, w)
    dx, dy = x - offset[0], y - offset[1]
    ring = ((np.hypot(dx, dy) + np.sin(np.arctan2(dx, dy) * freq) * amplitude) % ring_width) / ring_width - 0.5
    return _to_uint8(img + _param(level, 128) * ring[..., None])


def _star(shape: tuple[int, int], centre: np.ndarray, rays: np.ndarray, amount: float, radius: float) -> np.ndarray:
    """Weight in [0, 1] of a star of rays of the given lengths around ``centre`` (the release's sparkle kernel)."""
    y, x = _grid(*shape)
    dy, dx = y - centre[0], x - centre[1]
    n = len(rays)
    d = (np.arctan2(dx, dy) + np.pi) / (2 * np.pi) * n
    i = d.astype(np.int64)
    f = d - i
    if radius != 0:
        length = rays[i % n] + f * (rays[(i + 1) % n] - rays[i % n])
        g = (length**2 / (dy**2 + dx**2 + 1e-4)) ** ((100 - amount) / 50.0)
        f = (1 - (f - 0.5) ** 2) * g
    return np.clip(f, 0, 1)[..., None]


def sparkles(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Five white star bursts of radius ``0.01 * level * S``."""
    h, w = img.shape[:2]
    s = max(h, w)
    centres = rng.uniform(0, s, size=(5, 2))
    radius = _param(level, 0.1) * s
    state = np.random.RandomState(rng.randint(0, 2**32, dtype=np.uint64))
    n_rays = rng.randint(50, 200, size=5)
    out = img.astype(np.float64)
    for centre, n in zip(centres, n_rays):
        rays = np.maximum(1.0, radius + 0.25 * radius * state.randn(n))
        out = out + _star((h, w), centre, rays, 50.0, radius) * (255.0 - out)
    return _to_uint8(out)


def inverse_sparkles(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """White everywhere but a star-shaped window of radius S/4 whose edge sharpens with ``level``."""
    h, w = img.shape[:2]
    s = max(h, w)
    centre = rng.uniform(0.25, 0.75, size=2) * s
    radius, amount = 0.25 * s, 100 - _param(level, 65)
    state = np.random.RandomState(rng.randint(0, 2**32, dtype=np.uint64))
    rays = radius + 0.25 * radius * state.randn(rng.randint(50, 200))
    weight = _star((h, w), centre, rays, amount, radius)
    return _to_uint8(255.0 + weight * (img.astype(np.float64) - 255.0))


class _Perlin:
    """Classic 2D Perlin gradient noise (256-entry permutation, random unit gradients, smoothstep fade)."""

    def __init__(self, rng: np.random.RandomState) -> None:
        self.perm = np.concatenate([rng.permutation(256)] * 2)
        angles = rng.uniform(0, 2 * np.pi, size=256)
        self.grad = np.stack((np.cos(angles), np.sin(angles)), axis=1)

    def noise(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = x - x0, y - y0
        xi, yi = x0 & 255, y0 & 255

        def dot(ix: np.ndarray, iy: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            g = self.grad[self.perm[self.perm[ix] + iy]]
            return g[..., 0] * dx + g[..., 1] * dy

        sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        top = dot(xi, yi, fx, fy) * (1 - sx) + dot(xi + 1 & 255, yi, fx - 1, fy) * sx
        bottom = dot(xi, yi + 1 & 255, fx, fy - 1) * (1 - sx) + dot(xi + 1 & 255, yi + 1 & 255, fx - 1, fy - 1) * sx
        return top * (1 - sy) + bottom * sy

    def turbulence(self, x: np.ndarray, y: np.ndarray, octaves: float) -> np.ndarray:
        total, f = np.zeros_like(x), 1.0
        while f <= octaves:
            total += np.abs(self.noise(f * x, f * y)) / f
            f *= 2
        return total


def perlin_noise(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Blend in Perlin turbulence (cells of 32 px at 224) with weight ``0.05 * level``."""
    h, w = img.shape[:2]
    cell = 32 * max(h, w) / 224
    perlin = _Perlin(np.random.RandomState(rng.randint(0, 2**32, dtype=np.uint64)))
    y, x = _grid(h, w)
    field = np.clip(0.5 * perlin.turbulence(y / cell, x / cell, 16.0) + 0.5, 0, 1)[..., None]
    alpha = _param(level, 0.5)
    return _to_uint8((1 - alpha) * img.astype(np.float64) + 255 * alpha * field)


def plasma_noise(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Fade the image towards a coloured plasma texture with weight ``6.4 * level`` (of 255)."""
    h, w = img.shape[:2]
    time, iters = rng.uniform(0.0, 6 * np.pi), rng.randint(4, 7)
    sharpness, scale = rng.uniform(0.5, 1.0), rng.uniform(0.075, 0.2) * max(h, w)
    y, x = _grid(h, w)
    x, y = x / scale, y / scale
    i = [1.0, 1.0, 1.0, 0.0]
    for _ in range(iters):
        r0 = np.cos(y * i[0] - i[3] + time / i[1]) / i[2]
        r1 = np.sin(x * i[0] - i[3] + time / i[1]) / i[2]
        r0, r1 = r0 - r1 * 0.3, r1 + r0 * 0.3
        x, y = x + r0, y + r1
        i = [i[0] * 1.93, i[1] * 1.15, i[2] * (2.25 - sharpness), i[3] * time * i[1]]
    plasma = np.stack((np.sin(x - time), np.sin((x + y + np.sin(time)) * 0.5), np.sin(y + time)), axis=-1)
    intensity = _param(level, 64)
    return _to_uint8((1 - intensity / 255) * img + intensity * plasma)


def single_frequency_greyscale(img: np.ndarray, level: float, rng: np.random.RandomState) -> np.ndarray:
    """Add one grey plane wave of random frequency and phase, amplitude ``19.6 * level``."""
    h, w = img.shape[:2]
    major = rng.uniform(-np.pi, np.pi)
    freq = np.array([major, rng.uniform(-abs(major), abs(major))])[rng.permutation(2)]
    phase = rng.uniform(0, 2 * np.pi)
    y, x = _grid(h, w)
    wave = np.sin(x * freq[0] + y * freq[1] + phase)
    return _to_uint8(img + _param(level, 196) * wave[..., None])


CBAR_CORRUPTIONS: dict[str, Corruption] = {
    "blue_noise_sample": blue_noise_sample,
    "brownish_noise": brownish_noise,
    "caustic_refraction": caustic_refraction,
    "checkerboard_cutout": checkerboard_cutout,
    "cocentric_sine_waves": cocentric_sine_waves,
    "inverse_sparkles": inverse_sparkles,
    "perlin_noise": perlin_noise,
    "plasma_noise": plasma_noise,
    "single_frequency_greyscale": single_frequency_greyscale,
    "sparkles": sparkles,
}


def corrupt_cbar(img: np.ndarray, name: str, level: float, seed: int) -> np.ndarray:
    """``name`` at C-bar parameter ``level`` on an RGB uint8 image, deterministic given ``seed``."""
    if name not in CBAR_CORRUPTIONS:
        raise ValueError(
            f"corruption={name!r} is not an ImageNet-C-bar corruption; allowed: {', '.join(CBAR_CORRUPTIONS)}"
        )
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image of dtype {img.dtype} and shape {img.shape}; allowed: uint8 (H, W, 3)")
    return CBAR_CORRUPTIONS[name](img, level, np.random.RandomState(seed & 0xFFFFFFFF))
