"""Tests of IDX reading and writing and of the search for the MNIST and Fashion-MNIST files."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
import torch

from autoexp.data import sources
from autoexp.data.idx import read_idx, write_idx
from autoexp.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    IDX_FILE_STEMS,
    find_idx_files,
    load_idx_dataset,
)


def _random_images(count: int = 50, size: int = 28, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size), dtype=torch.uint8, generator=generator)


def _random_labels(count: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (count,), dtype=torch.uint8, generator=generator)


def _write_dataset(
    directory: Path,
    gz_keys: tuple[str, ...] = tuple(IDX_FILE_STEMS),
    train_count: int = 50,
    test_count: int = 20,
) -> dict[str, Path]:
    """Write the four files with random content and return their paths by key."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train_images": _random_images(train_count, seed=1),
        "train_labels": _random_labels(train_count, seed=2),
        "test_images": _random_images(test_count, seed=3),
        "test_labels": _random_labels(test_count, seed=4),
    }
    paths = {}
    for key, stem in IDX_FILE_STEMS.items():
        path = directory / (f"{stem}.gz" if key in gz_keys else stem)
        write_idx(path, tensors[key])
        paths[key] = path
    return paths


@pytest.mark.parametrize("file_name", ["images.idx", "images.idx.gz"])
def test_read_idx_round_trip_images(tmp_path, file_name):
    images = _random_images()
    path = tmp_path / file_name
    write_idx(path, images)

    loaded = read_idx(str(path))

    assert loaded.dtype == torch.uint8
    assert loaded.shape == (50, 28, 28)
    assert torch.equal(loaded, images)


@pytest.mark.parametrize("file_name", ["labels.idx", "labels.idx.gz"])
def test_read_idx_round_trip_labels(tmp_path, file_name):
    labels = _random_labels()
    path = tmp_path / file_name
    write_idx(path, labels)

    loaded = read_idx(path)

    assert loaded.shape == (50,)
    assert torch.equal(loaded, labels)


def test_write_idx_gzips_only_gz_names(tmp_path):
    labels = _random_labels()
    write_idx(tmp_path / "labels.gz", labels)
    write_idx(tmp_path / "labels", labels)

    assert (tmp_path / "labels.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "labels").read_bytes()[:4] == b"\x00\x00\x08\x01"
    assert (tmp_path / "labels").stat().st_size == 8 + 50


def test_read_idx_detects_gzip_by_content(tmp_path):
    labels = _random_labels()
    gzipped_without_suffix = tmp_path / "labels-idx1-ubyte"
    raw_with_gz_suffix = tmp_path / "labels-idx1-ubyte.gz"
    write_idx(tmp_path / "source.gz", labels)
    (tmp_path / "source.gz").rename(gzipped_without_suffix)
    write_idx(tmp_path / "source", labels)
    (tmp_path / "source").rename(raw_with_gz_suffix)

    assert torch.equal(read_idx(gzipped_without_suffix), labels)
    assert torch.equal(read_idx(raw_with_gz_suffix), labels)


def test_read_idx_empty_labels(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, torch.zeros(0, dtype=torch.uint8))

    assert read_idx(path).shape == (0,)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x12\x34\x08\x01", r"invalid IDX magic number 0x12340801: expected 0x00000801"),
        (b"\x00\x00\x0d\x01", r"unsupported IDX type code 0x0d .*expected 0x08 \(unsigned byte\)"),
        (b"\x00\x00\x08\x02", r"unsupported number of IDX dimensions 2 .*expected 1 \(labels\)"),
    ],
)
def test_read_idx_invalid_magic_number(tmp_path, header, message):
    path = tmp_path / "labels"
    path.write_bytes(header + b"\x00\x00\x00\x02" + b"\x01\x02")

    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + message):
        read_idx(path)


def test_read_idx_truncated_labels(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, _random_labels(50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    expected = (
        f"{path}: truncated IDX file: header declares 50 labels (50 bytes) but only 21 bytes "
        "follow; delete the file and download it again"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


def test_read_idx_truncated_images(tmp_path):
    path = tmp_path / "images"
    write_idx(path, _random_images(50))
    path.write_bytes(path.read_bytes()[:-1])

    expected = "header declares 50 images of 28x28 (39200 bytes) but only 39199 bytes follow"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00"])
def test_read_idx_truncated_magic_number(tmp_path, content):
    path = tmp_path / "labels"
    path.write_bytes(content)

    expected = f"truncated IDX file: expected a 4-byte magic number, found {len(content)} bytes"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x32\x00\x00")

    expected = "truncated IDX header: expected 3 dimension sizes (12 bytes) after the magic number"
    with pytest.raises(ValueError, match=re.escape(expected) + ", found 6 bytes"):
        read_idx(path)


@pytest.mark.parametrize("file_name", ["labels", "labels.gz"])
def test_read_idx_trailing_bytes(tmp_path, file_name):
    path = tmp_path / "labels"
    write_idx(path, _random_labels(50))
    data = path.read_bytes() + b"\x00\x00\x00"
    path = tmp_path / file_name
    path.write_bytes(gzip.compress(data) if file_name.endswith(".gz") else data)

    expected = (
        f"{path}: IDX file has 3 trailing bytes: header declares 50 labels (50 bytes) "
        "but 53 bytes follow"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


def test_read_idx_random_bytes_with_gz_name(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(
        b"\x42\x17" + torch.randint(0, 256, (998,), dtype=torch.uint8).numpy().tobytes()
    )

    expected = f"{path}: invalid gzip data: expected the gzip magic bytes 1f 8b, found 42 17"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


def test_read_idx_empty_gz_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"")

    expected = (
        f"{path}: invalid gzip data: expected the gzip magic bytes 1f 8b, found an empty file"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_idx(path)


def test_read_idx_corrupt_gzip_header(tmp_path):
    path = tmp_path / "labels.gz"
    # The gzip magic bytes followed by an unknown compression method (0x00 instead of 0x08).
    path.write_bytes(b"\x1f\x8b\x00" + bytes(20))

    with pytest.raises(ValueError, match=re.escape(f"{path}: invalid gzip data (BadGzipFile")):
        read_idx(path)


def test_read_idx_corrupt_deflate_data(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, _random_labels(2000))
    data = bytearray(path.read_bytes())
    data[10:30] = b"\xff" * 20
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=re.escape(f"{path}: invalid gzip data (error:")):
        read_idx(path)


def test_read_idx_gzip_cut_in_half(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, _random_images(50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    expected = (
        rf"{re.escape(str(path))}: invalid gzip data \(EOFError: .*\); "
        "delete the file and download it again"
    )
    with pytest.raises(ValueError, match=expected):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-idx1-ubyte"):
        read_idx(tmp_path / "missing-idx1-ubyte")


def test_write_idx_rejects_wrong_dtype(tmp_path):
    with pytest.raises(TypeError, match=r"torch\.uint8 tensor, got dtype torch\.float32"):
        write_idx(tmp_path / "images", torch.zeros(2, 3, 3))


def test_write_idx_rejects_wrong_ndim(tmp_path):
    with pytest.raises(ValueError, match=r"1 dimension .* or 3 dimensions .*got shape \(2, 3\)"):
        write_idx(tmp_path / "images", torch.zeros(2, 3, dtype=torch.uint8))


def test_find_idx_files_torchvision_layout(tmp_path):
    written = _write_dataset(tmp_path / "MNIST" / "raw")

    found = find_idx_files("mnist", tmp_path)

    assert found == written


def test_find_idx_files_dataset_folder(tmp_path):
    written = _write_dataset(tmp_path / "FashionMNIST", gz_keys=())

    found = find_idx_files("fashion_mnist", tmp_path)

    assert found == written


def test_find_idx_files_flat_mixed_gz(tmp_path):
    written = _write_dataset(tmp_path, gz_keys=("train_images", "test_labels"))

    found = find_idx_files("mnist", str(tmp_path))

    assert found == written
    assert found["train_images"].name == "train-images-idx3-ubyte.gz"
    assert found["train_labels"].name == "train-labels-idx1-ubyte"


def test_find_idx_files_prefers_raw_folder(tmp_path):
    _write_dataset(tmp_path)
    written = _write_dataset(tmp_path / "MNIST" / "raw")

    assert find_idx_files("mnist", tmp_path) == written


def test_find_idx_files_prefers_uncompressed_file(tmp_path):
    _write_dataset(tmp_path / "MNIST" / "raw")
    written = _write_dataset(tmp_path / "MNIST" / "raw", gz_keys=())

    assert find_idx_files("mnist", tmp_path) == written


def test_find_idx_files_skips_incomplete_folder(tmp_path):
    incomplete = _write_dataset(tmp_path / "MNIST" / "raw")
    incomplete["test_labels"].unlink()
    written = _write_dataset(tmp_path)

    assert find_idx_files("mnist", tmp_path) == written


def test_find_idx_files_uses_debian_folder(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    written = _write_dataset(debian)
    monkeypatch.setitem(sources.EXTRA_SEARCH_DIRS, "fashion_mnist", [debian])

    assert find_idx_files("fashion_mnist", tmp_path / "data") == written
    with pytest.raises(FileNotFoundError):
        find_idx_files("mnist", tmp_path / "data")


def test_load_idx_dataset_logs_folder_outside_root(tmp_path, monkeypatch, caplog):
    # A mistyped data.root that falls back to Debian's folder is named in the log.
    debian = tmp_path / "debian"
    _write_dataset(debian)
    monkeypatch.setitem(sources.EXTRA_SEARCH_DIRS, "fashion_mnist", [debian])
    _write_dataset(tmp_path / "MNIST" / "raw")

    with caplog.at_level("INFO", logger=sources.logger.name):
        load_idx_dataset("fashion_mnist", root=tmp_path / "typo")
        load_idx_dataset("mnist", root=tmp_path)

    assert caplog.messages == [
        f"Reading fashion_mnist from {debian}: the files are not under "
        f"data.root={tmp_path / 'typo'}",
        f"Reading mnist from {tmp_path / 'MNIST' / 'raw'}",
    ]


def test_find_idx_files_not_found_message(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    monkeypatch.setitem(sources.EXTRA_SEARCH_DIRS, "fashion_mnist", [debian])
    monkeypatch.chdir(tmp_path)
    partial = _write_dataset(tmp_path / "data" / "FashionMNIST")
    partial["train_images"].unlink()

    with pytest.raises(FileNotFoundError, match="Fashion-MNIST IDX files not found") as error:
        find_idx_files("fashion_mnist", "data")

    message = str(error.value)
    root = tmp_path / "data"
    searched = [root / "FashionMNIST" / "raw", root / "FashionMNIST", root, debian]
    for directory in searched:
        assert f"  {directory}\n" in message or f"  {directory} (" in message
    assert message.index(str(searched[0])) < message.index(f"  {searched[2]}\n")
    assert f"{root / 'FashionMNIST'} (incomplete, missing train-images-idx3-ubyte)" in message
    for stem in IDX_FILE_STEMS.values():
        assert stem in message
    assert "each with or without .gz" in message
    assert "data.root=/path/to/folder" in message
    assert f"data.download=true to download them into {searched[0]}" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_find_idx_files_not_found_mnist_omits_apt(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST IDX files not found") as error:
        find_idx_files("mnist", tmp_path)

    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "apt-get" not in message
    assert str(DEBIAN_FASHION_MNIST_DIR) not in message


def test_find_idx_files_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown data set name 'cifar10': expected one of mnist"):
        find_idx_files("cifar10", tmp_path)


def test_load_idx_dataset_shapes(tmp_path):
    _write_dataset(tmp_path / "MNIST" / "raw", gz_keys=("train_images",))

    data = load_idx_dataset("mnist", root=tmp_path)

    assert set(data) == set(IDX_FILE_STEMS)
    assert data["train_images"].shape == (50, 28, 28)
    assert data["train_labels"].shape == (50,)
    assert data["test_images"].shape == (20, 28, 28)
    assert data["test_labels"].shape == (20,)
    assert all(tensor.dtype == torch.uint8 for tensor in data.values())
    assert torch.equal(data["test_labels"], _random_labels(20, seed=4))


def test_load_idx_dataset_default_root(tmp_path, monkeypatch):
    _write_dataset(tmp_path / "data" / "MNIST" / "raw")
    monkeypatch.chdir(tmp_path)

    data = load_idx_dataset("mnist")

    assert data["train_images"].shape == (50, 28, 28)


def test_load_idx_dataset_not_found_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        load_idx_dataset("mnist", root=tmp_path)


def test_load_idx_dataset_count_mismatch(tmp_path):
    paths = _write_dataset(tmp_path)
    write_idx(paths["test_labels"], _random_labels(19))

    expected = (
        f"image and label counts differ in the test split: {paths['test_images']} contains "
        f"20 images but {paths['test_labels']} contains 19 labels"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_idx_dataset("mnist", root=tmp_path)


def test_load_idx_dataset_image_size_mismatch(tmp_path):
    paths = _write_dataset(tmp_path)
    write_idx(paths["test_images"], _random_images(20, size=32))

    expected = (
        f"train and test images differ in size: {paths['train_images']} contains 28x28 "
        f"images but {paths['test_images']} contains 32x32 images"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_idx_dataset("mnist", root=tmp_path)


def test_load_idx_dataset_labels_in_images_slot(tmp_path):
    paths = _write_dataset(tmp_path)
    write_idx(paths["train_images"], _random_labels(50))

    expected = f"{paths['train_images']}: expected 3 dimensions for images (n, rows, cols)"
    with pytest.raises(ValueError, match=re.escape(expected) + r", found shape \(50,\)"):
        load_idx_dataset("mnist", root=tmp_path)


def test_load_idx_dataset_truncated_file(tmp_path):
    paths = _write_dataset(tmp_path, gz_keys=())
    data = paths["train_labels"].read_bytes()
    paths["train_labels"].write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError, match=re.escape(f"{paths['train_labels']}: truncated")):
        load_idx_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason=f"{DEBIAN_FASHION_MNIST_DIR} is missing; apt-get install dataset-fashion-mnist adds it",
)
def test_load_idx_dataset_debian_fashion_mnist(tmp_path):
    data = load_idx_dataset("fashion_mnist", root=tmp_path)

    assert data["train_images"].shape == (60000, 28, 28)
    assert data["train_labels"].shape == (60000,)
    assert data["test_images"].shape == (10000, 28, 28)
    assert data["test_labels"].shape == (10000,)
    for key in ("train_labels", "test_labels"):
        assert data[key].min() == 0
        assert data[key].max() == 9
