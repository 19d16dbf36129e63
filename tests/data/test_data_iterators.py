"""Preprocessing and in-jit batching: splits, resizing, sampling, reproducibility, sharing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.data import iterators, preprocess


@pytest.fixture(scope="module")
def digits():
    return iterators.device_image_splits("digits", 8)


def test_train_split_is_80_10_10_disjoint_and_test_apart():
    a, b, c = preprocess.split_indices(1000)
    assert (len(a), len(b), len(c)) == (800, 100, 100)
    assert sorted(np.concatenate([a, b, c]).tolist()) == list(range(1000))
    raw = {
        "train": {"image": np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * 25,
                  "label": np.arange(10)},
        "test": {"image": np.full((3, 1, 1, 1), 255, np.uint8), "label": np.zeros(3)},
    }  # fmt: skip
    out = preprocess.prepare_image_splits(raw)
    assert [len(out[s]["label"]) for s in ("train", "inner_valid", "outer_valid", "test")] == [
        8, 1, 1, 3
    ]  # fmt: skip
    # Rows keep their labels, and images become float32 in [0, 1].
    for s in ("train", "inner_valid", "outer_valid"):
        np.testing.assert_allclose(out[s]["image"][:, 0, 0, 0], out[s]["label"] * 25 / 255)
    assert out["test"]["image"].dtype == np.float32 and out["test"]["image"].max() == 1.0


def test_resize_keeps_constants_and_range_and_averages_when_shrinking():
    const = np.full((2, 28, 28, 1), 0.3, np.float32)
    np.testing.assert_allclose(preprocess.resize_images(const, 8), 0.3, atol=1e-6)
    # A period-2 checkerboard shrunk 16 -> 8 averages to 0.5 away from the border (area-like;
    # at the border the kernel is cut and renormalised, hence the interior only).
    board = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[None, :, :, None]
    np.testing.assert_allclose(preprocess.resize_images(board, 8)[:, 1:-1, 1:-1], 0.5, atol=1e-6)
    up = preprocess.resize_images(np.random.default_rng(0).random((3, 28, 28, 3), np.float32), 32)
    assert up.shape == (3, 32, 32, 3) and up.min() >= 0 and up.max() <= 1


def test_sample_batch_draws_rows_inside_jit(digits):
    data = digits["train"]
    batch = jax.jit(iterators.sample_batch, static_argnums=2)(data, jax.random.PRNGKey(0), 64)
    assert batch["image"].shape == (64, 8, 8, 1) and batch["label"].dtype == jnp.int32
    # Every sampled (image, label) pair is a row of the split.
    images, labels = np.asarray(data["image"]), np.asarray(data["label"])
    rows = {(im.tobytes(), int(lb)) for im, lb in zip(images, labels, strict=True)}
    for im, lb in zip(np.asarray(batch["image"]), np.asarray(batch["label"]), strict=True):
        assert (im.tobytes(), int(lb)) in rows


def test_batch_at_covers_every_row_once_per_pass(digits):
    data = {"x": jnp.arange(10)}
    seen = np.concatenate([np.asarray(iterators.batch_at(data, i, 4)["x"]) for i in range(3)])
    assert seen.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_sample_windows_targets_are_next_tokens():
    tokens = jnp.arange(100, dtype=jnp.uint8)
    b = iterators.sample_windows(tokens, jax.random.PRNGKey(0), 5, 7)
    assert b["obs"].shape == (5, 7) and b["obs"].dtype == jnp.int32
    np.testing.assert_array_equal(b["target"], b["obs"] + 1)
    np.testing.assert_array_equal(np.diff(b["obs"], axis=1), 1)


def test_iterators_are_reproducible_per_seed_and_differ_across_seeds(digits):
    sample = lambda data, key: iterators.sample_batch(data, key, 16)
    first = [next(iterators.make_datasets(digits, sample, seed=0).train) for _ in range(1)]
    ds0 = iterators.make_datasets(digits, sample, seed=0)
    ds0b = iterators.make_datasets(digits, sample, seed=0)
    ds1 = iterators.make_datasets(digits, sample, seed=1)
    a = [next(ds0.train)["label"] for _ in range(3)]
    b = [next(ds0b.train)["label"] for _ in range(3)]
    c = [next(ds1.train)["label"] for _ in range(3)]
    np.testing.assert_array_equal(first[0]["label"], a[0])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[0], a[1])  # successive batches differ
    # Splits draw from different streams.
    assert not np.array_equal(next(ds1.inner_valid)["label"], c[0])


def test_identical_requests_share_one_device_copy(digits):
    again = iterators.device_image_splits("digits", 8)
    assert again is digits
    assert isinstance(digits["train"]["image"], jax.Array)
    assert iterators.device_image_splits("digits", 16)["train"]["image"].shape[1:] == (16, 16, 1)


def test_text_splits_are_contiguous_pieces_of_the_corpus(tmp_path):
    corpus = bytes(range(256)) * 4
    (tmp_path / "c.txt").write_bytes(corpus)
    splits = iterators.device_text_splits(tmp_path / "c.txt")
    pieces = [np.asarray(splits[s]["tokens"]) for s in ("train", "inner_valid", "outer_valid")]
    assert [len(p) for p in pieces] == [738, 92, 92]  # 80/10/10 of the first 90% (922 bytes)
    assert np.concatenate([*pieces, np.asarray(splits["test"]["tokens"])]).tobytes() == corpus
    assert iterators.device_text_splits(tmp_path / "c.txt") is splits


def test_first_load_from_inside_jit_caches_concrete_arrays(tmp_path):
    """A first request made while tracing must not cache (and later leak) a tracer."""
    iterators._device_image_splits.cache_clear()
    iterators._device_text_splits.cache_clear()
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(range(256)) * 8)

    @jax.jit
    def first_use(x):
        images = iterators.device_image_splits("digits", 4)["train"]["image"]
        tokens = iterators.device_text_splits(str(corpus))["train"]["tokens"]
        return x + images[0, 0, 0, 0] + tokens[3]

    assert float(first_use(1.0)) == pytest.approx(
        1.0 + float(iterators.device_image_splits("digits", 4)["train"]["image"][0, 0, 0, 0]) + 3
    )
    # The cached arrays are concrete and usable outside any trace.
    cached = iterators.device_image_splits("digits", 4)["train"]["image"]
    assert isinstance(cached, jax.Array) and not isinstance(cached, jax.core.Tracer)
    assert isinstance(iterators.device_text_splits(str(corpus))["test"]["tokens"], jax.Array)
