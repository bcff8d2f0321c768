"""Data set loaders on small files fabricated in the canonical formats, plus real MNIST."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from robustgate.data import DATASETS, Dataset, load_dataset
from robustgate.data.arrays import arrays_to_tensors, load_npz
from robustgate.data.cifar import load_cifar
from robustgate.data.datasets import validation_split
from robustgate.data.idx import load_idx_dataset, read_idx

MNIST_DIR = Path("/work/shared/data/mnist")
IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file holding the uint8 ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_split(root: Path, n: int = 5, gz: bool = False, seed: int = 0):
    """Fabricate the test split (``t10k-*``) of an MNIST-like set in ``root``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for stem, array in ((IMAGES, images), (LABELS, labels)):
        data = idx_bytes(array)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_load_gzipped_or_not(tmp_path, name, gz):
    images, labels = write_idx_split(tmp_path, gz=gz)
    x, y = load_idx_dataset(name, tmp_path, "test", verify=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.allclose(x[:, 0] * 255, torch.from_numpy(images).float())
    assert y.tolist() == labels.tolist()


def test_fabricated_mnist_fails_verification(tmp_path):
    write_idx_split(tmp_path, gz=True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: checksum mismatch: SHA-256"):
        load_idx_dataset("mnist", tmp_path, "test")


def test_fashion_checks_the_md5_of_gz_files_and_only_the_header_of_raw_files(tmp_path):
    write_idx_split(tmp_path, gz=True)
    with pytest.raises(ValueError, match="checksum mismatch: MD5 of the .gz file"):
        load_idx_dataset("fashion_mnist", tmp_path, "test")
    raw = tmp_path / "raw"
    raw.mkdir()
    write_idx_split(raw, gz=False)
    x, _ = load_idx_dataset("fashion_mnist", raw, "test")
    assert x.shape == (5, 1, 28, 28)


def test_truncated_and_corrupt_idx_files_are_clear_errors(tmp_path):
    write_idx_split(tmp_path)
    images = tmp_path / IMAGES
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{IMAGES}: truncated: .*\(5, 28, 28\)"):
        load_idx_dataset("mnist", tmp_path, "test", verify=False)
    images.write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="too short for an IDX header"):
        read_idx(images)
    images.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError, match="bad IDX magic number 0x47494638"):
        read_idx(images)
    images.write_bytes(idx_bytes(np.zeros(5, np.uint8)))  # a labels file in place of images
    with pytest.raises(ValueError, match=r"expected IDX magic 0x00000803 \(uint8, 3 dims\)"):
        load_idx_dataset("mnist", tmp_path, "test", verify=False)
    images.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="holds 4 images but .* holds 5 labels"):
        load_idx_dataset("mnist", tmp_path, "test", verify=False)
    gz = tmp_path / "gz"
    gz.mkdir()
    write_idx_split(gz, gz=True)
    packed = gz / f"{IMAGES}.gz"
    packed.write_bytes(packed.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{IMAGES}.gz: not a valid gzip file"):
        load_idx_dataset("mnist", gz, "test", verify=False)


def test_missing_idx_files_say_what_is_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{IMAGES} and {LABELS}.*{tmp_path}.*download"):
        load_idx_dataset("mnist", tmp_path, "test")


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Replace ``urlopen`` with one that serves ``files`` by URL basename; returns the URLs."""
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_a_corrupt_download_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, {f"{stem}.gz": gzip.compress(b"junk") for stem in (IMAGES, LABELS)})
    with pytest.raises(ValueError, match="fashion-mnist.*checksum mismatch.*download is corrupt"):
        load_idx_dataset("fashion_mnist", tmp_path, "test", download=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="no MNIST files in /work/shared/data/mnist")
def test_download_fetches_verifies_and_saves_the_canonical_files(tmp_path, monkeypatch):
    files = {f"{stem}.gz": (MNIST_DIR / f"{stem}.gz").read_bytes() for stem in (IMAGES, LABELS)}
    requested = serve(monkeypatch, files)
    x, y = load_idx_dataset("mnist", tmp_path / "new", "test", download=True)
    assert requested == [f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}" for name in files]
    assert x.shape == (10000, 1, 28, 28) and len(y) == 10000
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(files)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="no MNIST files in /work/shared/data/mnist")
def test_real_mnist_test_split_loads_verified():
    data = load_dataset("mnist", MNIST_DIR, "test")
    assert data.x.shape == (10000, 1, 28, 28) and data.x.dtype == torch.float32
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert sorted(set(data.y.tolist())) == list(range(10))
    assert data.y[:5].tolist() == [7, 2, 1, 0, 4]


# --- CIFAR ---------------------------------------------------------------------------------

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", b"labels", 10,
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", b"fine_labels", 100,
                 ["train"], ["test"]),
}


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_archive(root: Path, name: str, per_batch: int = 3) -> dict[str, np.ndarray]:
    """Fabricate the canonical archive of ``name`` in ``root``; returns the images by batch."""
    archive, folder, key, classes, train, test = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(1)
    batches = {}
    with tarfile.open(root / archive, "w:gz") as tar:
        for batch in train + test:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, size=per_batch).tolist()
            content = {b"batch_label": batch.encode(), b"data": data, key: labels}
            add_member(tar, f"{folder}/{batch}", pickle.dumps(content, protocol=2))
            batches[batch] = (data, labels)
    return batches


def test_cifar10_loads_from_the_archive_then_from_the_extracted_folder(tmp_path):
    batches = write_cifar_archive(tmp_path, "cifar10")
    x, y = load_cifar("cifar10", tmp_path, "train", verify=False)
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    first, labels = batches["data_batch_1"]
    assert torch.allclose(x[0] * 255, torch.from_numpy(first[0].reshape(3, 32, 32)).float())
    assert y[:3].tolist() == labels
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    test = load_dataset("cifar10", tmp_path, "test")
    assert test.x.shape == (3, 3, 32, 32) and test.num_classes == 10
    assert float(test.x.min()) >= 0 and float(test.x.max()) <= 1


def test_cifar100_uses_the_fine_labels(tmp_path):
    batches = write_cifar_archive(tmp_path, "cifar100", per_batch=4)
    data = load_dataset("cifar100", tmp_path, "train", verify=False)
    assert data.x.shape == (4, 3, 32, 32) and data.num_classes == 100
    assert data.y.tolist() == batches["train"][1]


def test_a_fabricated_cifar_archive_fails_the_md5_check(tmp_path):
    write_cifar_archive(tmp_path, "cifar10")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: checksum mismatch: MD5"):
        load_cifar("cifar10", tmp_path, "test")
    assert not (tmp_path / "cifar-10-batches-py").exists()


@pytest.mark.parametrize("member", ["../escaped", "/tmp/robustgate-absolute", "a/../../up"])
def test_unsafe_archive_members_are_rejected(tmp_path, member):
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/test_batch", b"x")
        add_member(tar, member, b"evil")
    with pytest.raises(ValueError, match="unsafe member path"):
        load_cifar("cifar10", root, "test", verify=False)
    assert sorted(os.listdir(root)) == ["cifar-10-python.tar.gz"]
    assert not (tmp_path / "escaped").exists()


def test_a_cifar_batch_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(ValueError, match="refusing to load os.system"):
        load_cifar("cifar10", tmp_path, "test")


def test_cifar_missing_or_malformed_data_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py or the archive.*download"):
        load_cifar("cifar10", tmp_path, "test")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    bad = {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}
    (folder / "test").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="N×3072 uint8"):
        load_cifar("cifar100", tmp_path, "test")
    (folder / "test").write_bytes(pickle.dumps(bad)[:30])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_cifar("cifar100", tmp_path, "test")


def test_a_corrupt_cifar_download_is_rejected(tmp_path, monkeypatch):
    requested = serve(monkeypatch, {"cifar-10-python.tar.gz": b"not the archive"})
    with pytest.raises(ValueError, match="checksum mismatch.*download is corrupt"):
        load_cifar("cifar10", tmp_path, "test", download=True)
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert list(tmp_path.iterdir()) == []


# --- user arrays ---------------------------------------------------------------------------


def test_npz_images_get_a_channel_axis_and_uint8_is_scaled(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) * 7
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 2]))
    inputs, labels, num_classes = load_npz(tmp_path / "a.npz")
    assert inputs.shape == (2, 1, 4, 4) and inputs.dtype == torch.float32
    assert torch.allclose(inputs[:, 0] * 255, torch.from_numpy(x).float())
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 2] and num_classes == 3
    np.savez(tmp_path / "b.npz", x=np.full((3, 2, 5, 5), 0.5), y=np.array([1.0, 0, 1]),
             num_classes=4)
    inputs, labels, num_classes = load_npz(tmp_path / "b.npz")
    assert inputs.shape == (3, 2, 5, 5) and labels.tolist() == [1, 0, 1] and num_classes == 4


def test_vector_arrays_are_kept_as_they_are():
    inputs, labels = arrays_to_tensors(np.linspace(0, 1, 12).reshape(6, 2), np.arange(6))
    assert inputs.shape == (6, 2) and inputs.dtype == torch.float32 and len(labels) == 6


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.full((2, 3), 1.5), [0, 1], r"\[0, 1\], found values in \[1.5, 1.5\]"),
        (np.array([[0.1, np.nan]]), [0], "1 NaN or infinite"),
        (np.zeros(3), [0, 1, 2], r"must have shape .* got \(3,\)"),
        (np.zeros((1, 1, 1, 1, 1)), [0], "must have shape"),
        (np.zeros((3, 2)), [0, 1], r"one label per sample, shape \(3,\)"),
        (np.zeros((2, 2)), [0.5, 1.0], "labels must be integers"),
        (np.zeros((2, 2)), ["a", "b"], "labels must be integers, got dtype <U1"),
        (np.zeros((2, 2)), [0, -1], "labels must be >= 0, found -1"),
        (np.zeros((2, 2), np.int64), [0, 1], "uint8 .* or float in \\[0, 1\\], got int64"),
        (np.zeros((0, 2)), np.zeros(0, np.int64), "no samples"),
    ],
)
def test_bad_arrays_are_errors_naming_the_problem(x, y, message):
    with pytest.raises(ValueError, match=message):
        arrays_to_tensors(np.asarray(x), np.asarray(y), "mine")


def test_bad_npz_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .npz file"):
        load_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['y'\]; the file holds"):
        load_npz(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable .npz file"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 2)), y=np.array([0, 3]), num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= max"):
        load_npz(tmp_path / "c.npz")


# --- load_dataset and the validation split ---------------------------------------------------


def rows(data: Dataset) -> set[tuple[float, ...]]:
    return {tuple(row) for row in data.x.reshape(len(data), -1).tolist()}


@pytest.mark.parametrize("validation_size", [30, 0.25])
def test_validation_is_a_seeded_disjoint_part_of_the_training_data(validation_size):
    full = load_dataset("twogauss", validation_size=0, seed=4, n=120)
    train = load_dataset("twogauss", split="train", validation_size=validation_size, seed=4, n=120)
    validation = load_dataset("twogauss", split="validation", validation_size=validation_size,
                              seed=4, n=120)
    again = load_dataset("twogauss", split="validation", validation_size=validation_size,
                         seed=4, n=120)
    assert len(validation) == 30 and len(train) == 90
    assert torch.equal(validation.x, again.x) and torch.equal(validation.y, again.y)
    assert rows(train).isdisjoint(rows(validation))
    assert rows(train) | rows(validation) == rows(full)
    test = load_dataset("twogauss", split="test", validation_size=validation_size, seed=4, n=120)
    assert rows(test).isdisjoint(rows(full)) and len(test) == 120


def test_npz_splits_keep_labels_with_their_inputs(tmp_path):
    x = np.linspace(0, 1, 50).reshape(50, 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 5)
    validation = load_dataset("npz", path=tmp_path / "d.npz", split="validation",
                              validation_size=10, seed=1)
    train = load_dataset("npz", path=tmp_path / "d.npz", validation_size=10, seed=1)
    assert validation.num_classes == 5 and validation.input_shape == (1,)
    indices = torch.cat([train.x, validation.x])[:, 0] * 49
    assert sorted(indices.round().long().tolist()) == list(range(50))
    assert torch.equal(validation.y, (validation.x[:, 0] * 49).round().long() % 5)
    other = load_dataset("npz", path=tmp_path / "d.npz", split="validation", validation_size=10,
                         seed=2)
    assert not torch.equal(other.x, validation.x)


@pytest.mark.parametrize("validation_size", [-1, 1.5, 0.0, 1.0, True, "10", None])
def test_invalid_validation_sizes_are_errors_naming_the_value(validation_size):
    with pytest.raises(ValueError, match=re.escape(repr(validation_size))) as error:
        load_dataset("twogauss", validation_size=validation_size, n=20)
    assert "validation_size" in str(error.value)


def test_validation_sizes_that_leave_no_samples_are_errors():
    with pytest.raises(ValueError, match="validation_size=20 gives 20 validation samples of 20"):
        load_dataset("twogauss", validation_size=20, n=20)
    with pytest.raises(ValueError, match="validation_size=0.01 gives 0"):
        validation_split(20, 0.01, seed=0)
    with pytest.raises(ValueError, match="split='validation' needs a validation_size > 0"):
        load_dataset("twogauss", split="validation")


def test_unknown_names_splits_and_missing_locations_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'svhn'; choose from .*'mnist'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        load_dataset("twogauss", split="dev")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs path="):
        load_dataset("npz")
    with pytest.raises(ValueError, match="n=10 applies to the synthetic data sets only"):
        load_dataset("mnist", tmp_path, n=10)
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "npz", "threegauss"} <= set(DATASETS)


def test_fabricated_idx_files_load_through_load_dataset(tmp_path):
    write_idx_split(tmp_path, n=8, gz=True)
    data = load_dataset("fashion_mnist", tmp_path, "test", verify=False)
    assert isinstance(data, Dataset) and data.input_shape == (1, 28, 28)
    assert data.num_classes == 10 and data.name == "fashion_mnist" and data.split == "test"
