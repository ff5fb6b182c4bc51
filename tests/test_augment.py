"""Data expansion: the book's one-pixel shifts, and random distortions drawn fresh each epoch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import group_options, load_option

from hpexp.data.augment import SIDE, BookShifts, NoExpansion, RandomDistortion, RandomShift, bilinear


def images(n=3, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0, 1, (n, SIDE * SIDE)).astype(dtype)


def test_book_expansion_gives_five_times_the_images_with_labels_kept():
    x, y = images(4), np.array([3, 1, 4, 1])
    big_x, big_y = BookShifts(seed=None).expand(x, y)
    assert big_x.shape == (20, 784) and big_x.dtype == x.dtype
    np.testing.assert_array_equal(big_y, np.repeat(y, 5))
    np.testing.assert_array_equal(big_x[::5], x)  # each original, followed by its four shifts


def test_book_expansion_is_shuffled_once_like_expand_mnist():
    x, y = images(4), np.array([3, 1, 4, 1])
    in_order_x, in_order_y = BookShifts(seed=None).expand(x, y)
    big_x, big_y = BookShifts().expand(x, y)
    assert not np.array_equal(big_x, in_order_x)
    rows = {tuple(r): label for r, label in zip(in_order_x, in_order_y, strict=True)}
    assert {tuple(r): label for r, label in zip(big_x, big_y, strict=True)} == rows


def test_shifted_pixels_are_right():
    x = images(2)
    big, _ = BookShifts(seed=None).expand(x, np.zeros(2, int))
    img = x[1].reshape(SIDE, SIDE)
    down, up, right, left = (big[5 + k].reshape(SIDE, SIDE) for k in range(1, 5))
    np.testing.assert_array_equal(down[1:], img[:-1])
    np.testing.assert_array_equal(up[:-1], img[1:])
    np.testing.assert_array_equal(right[:, 1:], img[:, :-1])
    np.testing.assert_array_equal(left[:, :-1], img[:, 1:])
    # the row or column that came in is zero, as the book's expand_mnist zero-fills
    assert not down[0].any() and not up[-1].any() and not right[:, 0].any() and not left[:, -1].any()
    # a single lit pixel moves by exactly one place
    dot = np.zeros((1, 784), np.float32)
    dot[0, 10 * SIDE + 5] = 1.0
    shifted, _ = BookShifts(seed=None).expand(dot, np.zeros(1, int))
    lit = [np.unravel_index(np.argmax(s), (SIDE, SIDE)) for s in shifted]
    assert lit == [(10, 5), (11, 5), (9, 5), (10, 6), (10, 4)]


@pytest.mark.parametrize("option", group_options("data/expand"))
def test_every_option_keeps_shapes_and_dtype(option):
    expansion = load_option("data/expand", option)
    x, y = images(6), np.arange(6)
    big_x, big_y = expansion.expand(x, y)
    assert len(big_x) == len(big_y) and len(big_x) % len(x) == 0
    out = expansion.augment(big_x, np.random.default_rng(0))
    assert out.shape == big_x.shape and out.dtype == x.dtype


def test_no_expansion_is_the_identity():
    x, y = images(2), np.arange(2)
    assert NoExpansion().expand(x, y)[0] is x and NoExpansion().augment(x, np.random.default_rng(0)) is x


def moved(picture, down, right):
    """The picture moved `down` and `right` pixels, zero-filled: cut from inside a wide zero frame."""
    framed = np.pad(picture, SIDE)
    return framed[SIDE - down : 2 * SIDE - down, SIDE - right : 2 * SIDE - right]


def test_random_shift_moves_each_image_by_a_whole_number_of_pixels_every_move_alike():
    k, n = 2, 2500
    x = images(n)
    out = RandomShift(max_shift=k).augment(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    pictures, shifted = x.reshape(n, SIDE, SIDE), out.reshape(n, SIDE, SIDE)
    moves = [(down, right) for down in range(-k, k + 1) for right in range(-k, k + 1)]
    # Random pixels: an image matches exactly one of the moves, which must be within the bound.
    match = np.array([[np.array_equal(shifted[i], moved(pictures[i], *m)) for m in moves] for i in range(n)])
    assert (match.sum(axis=1) == 1).all()
    counts = match.sum(axis=0)
    assert counts.min() > 0.6 * n / len(moves) and counts.max() < 1.4 * n / len(moves)


def test_random_shift_keeps_picture_shapes_is_fresh_each_epoch_and_zero_is_the_identity():
    x = images(50).reshape(50, 1, SIDE, SIDE)  # a conv net's input
    rng = np.random.default_rng(3)
    first, second = RandomShift(1).augment(x, rng), RandomShift(1).augment(x, rng)
    assert first.shape == x.shape and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, RandomShift(1).augment(x, np.random.default_rng(3)))
    assert RandomShift(0).augment(x, rng) is x
    assert RandomShift(0).expand(x, np.arange(50))[0] is x  # the training set keeps its size


@pytest.mark.parametrize("bad", [-1, SIDE, 1.5, True, "1"])
def test_random_shift_refuses_a_shift_that_is_not_a_whole_number_of_pixels_in_range(bad):
    with pytest.raises(ValueError, match=r"data.expand.max_shift must be a whole number of pixels in 0..27"):
        RandomShift(max_shift=bad)


def test_bilinear_sampling_at_integer_offsets_is_a_shift():
    x = images(2, dtype=np.float64).reshape(2, SIDE, SIDE)
    i, j = np.mgrid[0:SIDE, 0:SIDE].astype(float)
    np.testing.assert_allclose(bilinear(x, i, j), x)
    moved = bilinear(x, i - 2, j + 1)  # output (r, c) takes the source (r - 2, c + 1)
    np.testing.assert_allclose(moved[:, 2:, :-1], x[:, :-2, 1:])
    assert not moved[:, :2].any() and not moved[:, :, -1].any()


def test_zero_distortion_is_the_identity():
    x = images(3, dtype=np.float64)
    out = RandomDistortion(max_shift=0, max_degrees=0).augment(x, np.random.default_rng(0))
    np.testing.assert_allclose(out, x, atol=1e-12)


def test_random_distortion_is_fresh_each_epoch_and_reproducible():
    x = images(4)
    aug = RandomDistortion(elastic_alpha=2.0)
    rng = np.random.default_rng(1)
    first, second = aug.augment(x, rng), aug.augment(x, rng)
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(first, aug.augment(x, np.random.default_rng(1)))
    # small distortions: mostly the same picture, the ink roughly kept
    assert 0.5 < first.sum() / x.sum() < 1.5


def test_a_small_rotation_moves_a_pixel_along_a_circle():
    dot = np.zeros((1, 784))
    dot[0, 3 * SIDE + 13] = 1.0  # near the top, left of the centre column 13.5
    out = RandomDistortion(max_shift=0, max_degrees=30).augment(dot, np.random.default_rng(0))
    r, c = np.unravel_index(np.argmax(out), (SIDE, SIDE))
    centre = (SIDE - 1) / 2
    assert np.hypot(r - centre, c - centre) == pytest.approx(np.hypot(3 - centre, 13 - centre), abs=1.0)


@pytest.mark.parametrize(
    "fields", [{"max_shift": -1}, {"max_degrees": -5}, {"elastic_alpha": -1}, {"elastic_sigma": 0}]
)
def test_bad_values_are_rejected(fields):
    with pytest.raises(ValueError, match="data.expand"):
        RandomDistortion(**fields)
