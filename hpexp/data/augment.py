"""Expanding the training data: more examples made from the ones we have (chapter 3, ch6).

Every option of `conf/data/expand/` has the same two methods: `expand(x, y)` runs once before
training and returns the training set to use (the book's expand_mnist makes it 5x larger), and
`augment(x, rng)` runs at the start of every epoch on that epoch's images and returns what the
network trains on (random shifts, rotations and elastic distortions, fresh each epoch from the
"augment" random stream). Images are rows of 784 pixels, a 28 x 28 picture in row-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BookShifts", "NoExpansion", "RandomDistortion", "RandomShift", "bilinear", "one_pixel_shifts"]

SIDE = 28
CHUNK = 5_000  # images transformed at once: bounds the temporary coordinate arrays


@dataclass(frozen=True)
class NoExpansion:
    """Train on the data as it is."""

    def expand(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x


def _moved(rows: int, cols: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(destination, source) slices of a picture moved down `rows` and right `cols` pixels."""
    dst = slice(max(rows, 0), SIDE + min(rows, 0)), slice(max(cols, 0), SIDE + min(cols, 0))
    src = slice(max(-rows, 0), SIDE + min(-rows, 0)), slice(max(-cols, 0), SIDE + min(-cols, 0))
    return dst, src


def one_pixel_shifts(x: np.ndarray) -> list[np.ndarray]:
    """The four copies of the images moved by one pixel (down, up, right, left), zero-filled."""
    images = x.reshape(-1, SIDE, SIDE)
    shifted = []
    for rows, cols in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out = np.zeros_like(images)
        dst, src = _moved(rows, cols)
        out[:, dst[0], dst[1]] = images[:, src[0], src[1]]
        shifted.append(out.reshape(len(x), -1))
    return shifted


@dataclass(frozen=True)
class RandomShift:
    """The book's shifted copies made fresh every epoch instead of stored: each image moves by a
    whole number of pixels drawn uniformly from -max_shift..max_shift, down and right independently,
    zero-filled. An epoch costs one copy of the images (RandomDistortion's resampling costs several
    epochs of a 784-100-10 network), and the training set keeps its size; max_shift=0 trains on the
    images as they are."""

    max_shift: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_shift, bool)
            or not isinstance(self.max_shift, int)
            or not 0 <= self.max_shift < SIDE
        ):
            raise ValueError(
                f"data.expand.max_shift must be a whole number of pixels in 0..{SIDE - 1}, "
                f"got {self.max_shift!r}"
            )

    def expand(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.max_shift == 0:
            return x
        k = self.max_shift
        images = x.reshape(len(x), SIDE, SIDE)
        out = np.zeros_like(images)
        rows, cols = rng.integers(-k, k + 1, (2, len(x)))
        # Images with the same move are copied together: (2k + 1)^2 block copies, no resampling.
        move = (rows + k) * (2 * k + 1) + (cols + k)
        order = np.argsort(move, kind="stable")
        bounds = np.searchsorted(move[order], np.arange((2 * k + 1) ** 2 + 1))
        for m in range((2 * k + 1) ** 2):
            which = order[bounds[m] : bounds[m + 1]]
            if which.size:
                dst, src = _moved(m // (2 * k + 1) - k, m % (2 * k + 1) - k)
                out[which, dst[0], dst[1]] = images[which, src[0], src[1]]
        return out.reshape(x.shape)


@dataclass(frozen=True)
class BookShifts:
    """The book's expand_mnist.py: each training image followed by its four one-pixel shifts, so
    50,000 images become 250,000 (network3 reached 99.37% with it). Like expand_mnist.py, the
    result is shuffled once (with its own `seed`; None keeps each image next to its shifts), which
    matters for network3's runs that never reshuffle (`train.shuffle=false`); other runs reshuffle
    every epoch anyway."""

    seed: int | None = 0

    def expand(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stacked = np.stack([x, *one_pixel_shifts(x)], axis=1)  # (n, 5, 784): image i, then its shifts
        big_x, big_y = stacked.reshape(-1, x.shape[-1]), np.repeat(y, 5)
        if self.seed is None:
            return big_x, big_y
        order = np.random.default_rng(self.seed).permutation(len(big_y))
        return big_x[order], big_y[order]

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x


def _gaussian_blur_matrix(sigma: float) -> np.ndarray:
    """G with (G @ image) = the columns convolved with a Gaussian of std sigma (zero borders)."""
    i = np.arange(SIDE)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return g / g.sum(axis=1, keepdims=True)


def bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample images (n, 28, 28) at real coordinates (broadcastable to (n, 28, 28)), zero outside."""
    n, width = len(images), SIDE + 2
    flat = np.pad(images, ((0, 0), (1, 1), (1, 1))).reshape(-1)  # a zero border for points outside
    # Coordinates in the padded picture, clipped onto its zero border; each image's offset in `flat`.
    r = np.clip(np.broadcast_to(rows, images.shape) + 1, 0, SIDE + 1).astype(images.dtype)
    c = np.clip(np.broadcast_to(cols, images.shape) + 1, 0, SIDE + 1).astype(images.dtype)
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = r - r0, c - c0
    index = (r0.astype(np.intp) * width + c0.astype(np.intp)).reshape(n, -1)
    index += (np.arange(n) * width * width)[:, None]
    last = flat.size - 1  # neighbours past the last border pixel have weight 0: any valid index works

    def at(offset: int) -> np.ndarray:
        return flat.take(np.minimum(index + offset, last)).reshape(images.shape)

    top = at(0) * (1 - fc) + at(1) * fc
    bottom = at(width) * (1 - fc) + at(width + 1) * fc
    return top * (1 - fr) + bottom * fr


@dataclass(frozen=True)
class RandomDistortion:
    """On-the-fly augmentation: each epoch every image is moved by a random shift of up to
    `max_shift` pixels, rotated by up to `max_degrees` about its centre and, if `elastic_alpha` > 0,
    elastically distorted (Simard et al. 2003: a uniform random displacement field smoothed by a
    Gaussian of std `elastic_sigma` pixels, scaled so its largest displacement is `elastic_alpha`
    pixels), then resampled bilinearly with zero fill."""

    max_shift: float = 2.0
    max_degrees: float = 10.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        for name in ("max_shift", "max_degrees", "elastic_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"data.expand.{name} must be >= 0, got {getattr(self, name)}")
        if not self.elastic_sigma > 0:
            raise ValueError(f"data.expand.elastic_sigma must be > 0, got {self.elastic_sigma}")

    def expand(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(x)
        for start in range(0, len(x), CHUNK):
            out[start : start + CHUNK] = self._distort(x[start : start + CHUNK], rng)
        return out

    def _distort(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(x)
        theta = np.deg2rad(rng.uniform(-self.max_degrees, self.max_degrees, (n, 1, 1)))
        shift = rng.uniform(-self.max_shift, self.max_shift, (2, n, 1, 1))
        centre = (SIDE - 1) / 2
        i, j = np.mgrid[0:SIDE, 0:SIDE] - centre
        # Inverse map: the output pixel (i, j) takes its value from the rotated, shifted source point.
        cos, sin = np.cos(theta), np.sin(theta)
        rows = cos * i - sin * j + centre - shift[0]
        cols = sin * i + cos * j + centre - shift[1]
        if self.elastic_alpha > 0:
            g = _gaussian_blur_matrix(self.elastic_sigma)
            field = rng.uniform(-1.0, 1.0, (2, n, SIDE, SIDE))
            smooth = g @ field @ g.T
            smooth *= self.elastic_alpha / np.maximum(np.abs(smooth).max(axis=(-2, -1), keepdims=True), 1e-12)
            rows, cols = rows + smooth[0], cols + smooth[1]
        return bilinear(x.reshape(n, SIDE, SIDE), rows, cols).reshape(n, -1)
