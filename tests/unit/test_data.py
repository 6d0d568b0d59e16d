"""Dataset loading through the same code path users take, on small files in the real formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesplit.errors import DataError
from edgesplit.model import data

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """IDX (LeCun) format: magic 0x0000 08 <ndim>, big-endian uint32 dims, then uint8 data."""
    payload = struct.pack(">I", 0x0800 | array.ndim)
    payload += b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, (n_test, 28, 28))
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, (n_train,)), gz)
    write_idx(folder / "t10k-images-idx3-ubyte", test_images, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)
    return test_images


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files_in_data_dir(tmp_path: Path, gz: bool) -> None:
    images = make_mnist(tmp_path / "d", gz=gz)
    test = data.load("mnist", "test", data_dir=tmp_path / "d")
    assert len(test) == 5
    assert torch.equal(test.images[:, 0], torch.from_numpy(images).to(torch.uint8))
    assert test.labels is not None and test.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(data.load("mnist", "train", data_dir=tmp_path / "d")) == 12


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "nowhere")
    assert len(data.load("fashion-mnist")) == 5


def write_cifar(root: Path, n: int, fine: bool) -> np.ndarray:
    folder = root / ("cifar-100-python" if fine else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    label_key = "fine_labels" if fine else "labels"
    names = ["train", "test"] if fine else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    test_data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    for name in names:
        batch = test_data if name.startswith("test") else rng.integers(0, 256, (n, 3072), np.uint8)
        entry = {"data": batch, label_key: [i % 7 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta_name, meta_key = ("meta", "fine_label_names") if fine else ("batches.meta", "label_names")
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(7)]}))
    return test_data


@pytest.mark.parametrize("fine", [False, True])
def test_cifar_from_python_batches(tmp_path: Path, fine: bool) -> None:
    raw = write_cifar(tmp_path, 4, fine)
    name = "cifar100" if fine else "cifar10"
    test = data.load(name, "test", data_dir=tmp_path)
    assert test.images.shape == (4, 3, 32, 32)
    assert torch.equal(test.images, torch.from_numpy(raw.reshape(4, 3, 32, 32)))
    assert test.labels is not None and test.labels.tolist() == [0, 1, 2, 3]
    x = next(test.batches(4, 48))[1]
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32


def test_missing_data_says_where_it_looked_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataError) as info:
        data.load("fashion-mnist", data_dir=tmp_path / "mine")
    message = str(info.value)
    assert str(tmp_path / "mine") in message and str(tmp_path / "system") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    make_mnist(tmp_path / "d", gz=False)
    (tmp_path / "d" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="corrupt or unreadable"):
        data.load("mnist", "test", data_dir=tmp_path / "d")


def test_corrupt_gzip_is_a_clear_error(tmp_path: Path) -> None:
    make_mnist(tmp_path / "d", gz=True)
    gz = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:15])
    with pytest.raises(DataError, match="corrupt"):
        data.load("mnist", "test", data_dir=tmp_path / "d")


def test_dataset_name_typo_lists_known_names() -> None:
    with pytest.raises(DataError) as info:
        data.load("fashon-mnist")
    assert "fashion-mnist" in str(info.value) and "cifar10" in str(info.value)


def test_preprocess_expands_grayscale_and_normalises() -> None:
    info = data.DATASETS["fashion-mnist"]
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    x = data.preprocess(images, info, 32, channels=3)
    assert x.shape == (2, 3, 32, 32)
    expected = (1.0 - info.mean[0]) / info.std[0]
    assert torch.allclose(x, torch.full_like(x, expected))


@pytest.mark.skipif(not FMNIST_SYSTEM.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_debian_package() -> None:
    test = data.load("fashion-mnist", "test")
    assert len(test) == 10_000
    assert test.labels is not None
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_two_sources_never_share_an_unpacked_copy(tmp_path: Path) -> None:
    make_mnist(tmp_path / "a", n_test=5)
    make_mnist(tmp_path / "b", n_test=7)
    assert len(data.load("fashion-mnist", data_dir=tmp_path / "a")) == 5
    assert len(data.load("fashion-mnist", data_dir=tmp_path / "b")) == 7
    assert len(data.load("fashion-mnist", data_dir=tmp_path / "a")) == 5
