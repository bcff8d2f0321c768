"""CIFAR-10 and CIFAR-100 from the canonical "python version" archives.

``root`` holds either the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or
the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``); the folder is used when
both are present. An archive is checked against its published MD5 (with ``verify=True``) and
extracted once into ``root``, safely: members with absolute paths, ``..`` components, links or
special files are rejected, and the folder appears by an atomic rename only once complete.

An extracted folder cannot be checksummed against the canonical archive (the published sums
cover only the archive), so a folder is checked structurally only: the batch files exist, hold
``N × 3072`` uint8 data and ``N`` labels in range.

The batches are pickles; they are read with an unpickler that only admits the plain types and the
numpy array constructors a CIFAR batch consists of, so a doctored file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from robustgate.data.idx import download, file_digest

CIFAR_DATASETS = ("cifar10", "cifar100")
CIFAR_SPLITS = ("train", "test")
IMAGE_SHAPE = (3, 32, 32)
_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class _Layout:
    archive: str
    md5: str
    folder: str
    batches: dict[str, tuple[str, ...]]
    label_key: bytes
    num_classes: int


_LAYOUTS = {
    "cifar10": _Layout(
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        batches={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key=b"labels",
        num_classes=10,
    ),
    "cifar100": _Layout(
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        batches={"train": ("train",), "test": ("test",)},
        label_key=b"fine_labels",
        num_classes=100,
    ),
}


def num_cifar_classes(name: str) -> int:
    """The number of classes of ``"cifar10"`` (10) or ``"cifar100"`` (100, the fine labels)."""
    return _layout(name).num_classes


def load_cifar(
    name: str, root: str | Path, split: str = "train", download: bool = False, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of ``"cifar10"`` or ``"cifar100"`` (fine labels) from ``root``.

    Returns ``x`` float32 in ``[0, 1]`` of shape ``(n, 3, 32, 32)`` and ``y`` int64. With neither
    the folder nor the archive in ``root``, ``download=True`` fetches the archive (atomically,
    MD5-verified) and a ``FileNotFoundError`` says what is expected otherwise. ``verify=False``
    skips the archive's MD5 check (for archives that are not the canonical one).
    """
    layout = _layout(name)
    if split not in CIFAR_SPLITS:
        raise ValueError(f"split must be one of {CIFAR_SPLITS} for {name}, got {split!r}")
    root = Path(root)
    folder, archive = root / layout.folder, root / layout.archive
    if not folder.is_dir():
        if not archive.is_file():
            if not download:
                raise FileNotFoundError(
                    f"{name}: expected the folder {layout.folder} or the archive "
                    f"{layout.archive} in {root}; pass download=True to fetch the archive"
                )
            _download_archive(layout, archive)
        elif verify:
            _check_md5(archive, layout.md5)
        _extract(archive, layout.folder, root)
    parts = [_read_batch(folder / batch, layout) for batch in layout.batches[split]]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    x = torch.from_numpy(images.reshape(-1, *IMAGE_SHAPE).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels)


def _layout(name: str) -> _Layout:
    if name not in _LAYOUTS:
        raise ValueError(f"unknown CIFAR data set {name!r}; choose from {CIFAR_DATASETS}")
    return _LAYOUTS[name]


def _check_md5(path: Path, expected: str, source: str | Path | None = None) -> None:
    """Check the MD5 of ``path``; ``source`` (a URL when downloading) names it in the error."""
    actual = file_digest(path, "md5")
    if actual != expected:
        hint = (
            "the download is corrupt; nothing was saved" if source else
            "the archive is corrupt or not the canonical one (pass verify=False to load others)"
        )
        raise ValueError(
            f"{source or path}: checksum mismatch: MD5 is {actual}, expected {expected}; {hint}"
        )


def _download_archive(layout: _Layout, archive: Path) -> None:
    url = _URL + layout.archive
    download(url, archive, lambda temporary: _check_md5(temporary, layout.md5, url))


def _extract(archive: Path, folder: str, root: Path) -> None:
    """Extract the members under ``folder`` into a temporary directory in ``root``, after
    checking every member of the archive is safe, then rename the folder into place."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            wanted = [m for m in members if PurePosixPath(m.name).parts[:1] == (folder,)]
            if not wanted:
                raise ValueError(f"{archive}: the archive has no folder {folder}")
            with tempfile.TemporaryDirectory(prefix=f".{folder}.", dir=root) as temporary:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(temporary, members=wanted, filter="data")
                else:  # Python without extraction filters; the members were checked above
                    tar.extractall(temporary, members=wanted)
                target = root / folder
                if not target.exists():  # another process may have extracted it meanwhile
                    (Path(temporary) / folder).rename(target)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{archive}: not a readable tar.gz archive: {error}") from error


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{archive}: unsafe member path {member.name!r} (absolute or '..')")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: member {member.name!r} is a link or special file")


def _read_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the extracted folder; restore it, or remove the folder and "
            f"put {layout.archive} in {path.parent.parent}"
        )
    try:
        with path.open("rb") as stream:
            batch = _BatchUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable CIFAR batch (corrupt or truncated): {error}"
                         ) from error
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{path}: expected a dict with keys b'data' and {layout.label_key!r}, found {keys}"
        )
    images = batch[b"data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or (
        images.shape[1] != int(np.prod(IMAGE_SHAPE))
    ):
        found = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
        raise ValueError(f"{path}: b'data' must be an N×3072 uint8 array, found {found}")
    labels = np.asarray(batch[layout.label_key])
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: expected {len(images)} integer labels under {layout.label_key!r}, found "
            f"{labels.dtype} of shape {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ValueError(f"{path}: label {bad} is out of range 0–{layout.num_classes - 1}")
    return images, labels.astype(np.int64)


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array constructors for pickles
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch is made of: dicts, lists, bytes, numbers and numpy arrays.
    The numpy constructors are resolved to the running numpy's, whichever module path (numpy 1's
    ``numpy.core`` or numpy 2's ``numpy._core``) the pickle names."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
        ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return self._ALLOWED[(module, name)]

