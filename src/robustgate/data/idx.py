"""MNIST and Fashion-MNIST from their IDX files, gzipped (``.gz``) or not, in a given directory.

Each split is two files in ``root``: ``{prefix}-images-idx3-ubyte`` (``n × 28 × 28`` uint8) and
``{prefix}-labels-idx1-ubyte`` (``n`` uint8 labels 0–9), with ``prefix`` ``train`` or ``t10k``;
either name may carry a ``.gz`` suffix (the ``.gz`` file is used when both exist).

Integrity, with ``verify=True``:

- MNIST: the SHA-256 of the *decompressed* IDX bytes, so the canonical ``.gz`` downloads, a
  re-compressed copy and an uncompressed copy all pass.
- Fashion-MNIST: only the MD5 sums of the canonical ``.gz`` files are published, so a ``.gz``
  file is checked against those; an *uncompressed* Fashion-MNIST file cannot be checksummed and
  is checked by its IDX header and shape only.

Every file is also checked structurally, verified or not: the IDX magic number, the number and
sizes of its dimensions, a file length that matches the header exactly, image and label counts
that agree, and labels in 0–9.

This module also holds the small download and hashing helpers the CIFAR loader shares.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robustgate.io import atomic_write

IDX_DATASETS = ("mnist", "fashion_mnist")
IDX_SPLITS = ("train", "test")
NUM_CLASSES = 10
IMAGE_SIZE = 28

_PREFIX = {"train": "train", "test": "t10k"}
_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
# SHA-256 of the decompressed MNIST IDX files.
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# MD5 of the canonical (published) Fashion-MNIST .gz files.
_FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
_NOT_CANONICAL = (
    "the file is corrupt or not the canonical one (pass verify=False to load other files)"
)
_BAD_DOWNLOAD = "the download is corrupt; nothing was saved"
# IDX element type code -> numpy dtype (big-endian).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path`` under ``algorithm`` (e.g. ``"md5"``)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, path: Path, check: Callable[[Path], None]) -> None:
    """Download ``url`` to ``path`` atomically: the bytes go to a temporary file beside
    ``path``, ``check(temporary)`` verifies them (raising on a mismatch), then a rename puts them
    in place. A failed download or check leaves no file behind."""

    def write(temporary: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, temporary.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        check(temporary)

    try:
        atomic_write(path, write)
    except urllib.error.URLError as error:
        raise OSError(f"could not download {url}: {error.reason}") from error


def parse_idx(data: bytes, source: str | Path) -> np.ndarray:
    """Parse the bytes of an IDX file into an array of its shape and element type; ``source``
    names the file in errors. A bad magic number, a short header, or a length that does not match
    the header (truncated or trailing bytes) is a ``ValueError``."""
    if len(data) < 4:
        raise ValueError(f"{source}: {len(data)} bytes is too short for an IDX header (truncated)")
    code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{source}: bad IDX magic number 0x{data[:4].hex()}; not an IDX file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{source}: truncated IDX header ({len(data)} bytes, {ndim} dims need {header})"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: {problem}: the header declares shape {dims} ({expected} bytes in all), "
            f"the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file, decompressing it first if its name ends in ``.gz``."""
    return parse_idx(_read_bytes(Path(path)), path)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path}: not a valid gzip file (truncated or corrupt): {error}"
        ) from error


def load_idx_dataset(
    name: str, root: str | Path, split: str = "train", download: bool = False, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of ``"mnist"`` or ``"fashion_mnist"`` from the IDX files in ``root``.

    Returns ``x`` float32 in ``[0, 1]`` of shape ``(n, 1, 28, 28)`` and ``y`` int64 in 0–9.
    ``download=True`` fetches missing files (as the canonical ``.gz``) into ``root``;
    downloads are always verified. ``verify=False`` skips the checksums (for files that are not
    the canonical ones) but not the structural checks.
    """
    if name not in IDX_DATASETS:
        raise ValueError(f"unknown IDX data set {name!r}; choose from {IDX_DATASETS}")
    if split not in IDX_SPLITS:
        raise ValueError(f"split must be one of {IDX_SPLITS} for {name}, got {split!r}")
    root = Path(root)
    stems = [f"{_PREFIX[split]}-{kind}" for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    found = {stem: _find(root, stem) for stem in stems}
    missing = [stem for stem, path in found.items() if path is None]
    if missing and not download:
        raise FileNotFoundError(
            f"{name} {split} split: expected {' and '.join(stems)} (optionally with .gz) in "
            f"{root}, missing {', '.join(missing)}; pass download=True to fetch them"
        )
    for stem in missing:
        found[stem] = root / f"{stem}.gz"
        _download_idx(name, stem, found[stem])
    images_path, labels_path = (found[stem] for stem in stems)
    images = _load_checked(name, images_path, verify, ndim=3)
    labels = _load_checked(name, labels_path, verify, ndim=1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{images_path}: images are {images.shape[1]}×{images.shape[2]}, expected "
            f"{IMAGE_SIZE}×{IMAGE_SIZE}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(
            f"{labels_path}: label {int(labels.max())} is out of range 0–{NUM_CLASSES - 1}"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_checked(name: str, path: Path, verify: bool, ndim: int) -> np.ndarray:
    data = _read_bytes(path)
    array = parse_idx(data, path)
    magic = 0x800 + ndim
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise ValueError(
            f"{path}: expected IDX magic 0x{magic:08x} (uint8, {ndim} dims), found "
            f"{array.dtype} with {array.ndim} dims"
        )
    if verify:
        stem = path.name.removesuffix(".gz")
        if name == "mnist":
            _check_digest(path, hashlib.sha256(data).hexdigest(), _MNIST_SHA256[stem],
                          "SHA-256 of the decompressed IDX bytes", _NOT_CANONICAL)
        elif path.suffix == ".gz":
            _check_digest(path, file_digest(path, "md5"), _FASHION_GZ_MD5[stem],
                          "MD5 of the .gz file", _NOT_CANONICAL + "; only the canonical .gz "
                          "downloads match, an uncompressed copy is checked by its header only")
    return array


def _check_digest(source: str | Path, actual: str, expected: str, what: str, hint: str) -> None:
    if actual != expected:
        raise ValueError(
            f"{source}: checksum mismatch: {what} is {actual}, expected {expected}; {hint}"
        )


def _download_idx(name: str, stem: str, path: Path) -> None:
    url = f"{_URLS[name]}{stem}.gz"

    def check(temporary: Path) -> None:
        if name == "mnist":
            actual = hashlib.sha256(_read_bytes(temporary)).hexdigest()
            _check_digest(url, actual, _MNIST_SHA256[stem],
                          "SHA-256 of the decompressed IDX bytes", _BAD_DOWNLOAD)
        else:
            _check_digest(url, file_digest(temporary, "md5"), _FASHION_GZ_MD5[stem],
                          "MD5 of the .gz file", _BAD_DOWNLOAD)

    download(url, path, check)
