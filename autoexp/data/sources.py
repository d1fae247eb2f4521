"""Location, download and loading of the MNIST and Fashion-MNIST IDX files.

Both data sets come as four IDX files (see ``autoexp.data.idx``). The folder layout that
torchvision uses, ``<root>/MNIST/raw/`` and ``<root>/FashionMNIST/raw/``, is searched first,
so a data folder shared with torchvision works without copies.
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

import torch

from autoexp.data.idx import _decode_idx, _InvalidIdxError, read_idx

logger = logging.getLogger(__name__)

IDX_FILE_STEMS: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""File name without ``.gz`` for each key of the dictionaries that this module returns."""

EXPECTED_NDIMS: dict[str, int] = {
    "train_images": 3,
    "train_labels": 1,
    "test_images": 3,
    "test_labels": 1,
}

DATASET_FOLDERS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
"""Folder name under the data root for each data set, as torchvision names it."""

DATASET_TITLES: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

DEFAULT_MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}
"""Base URLs that contain ``<stem>.gz`` for each of the four files, tried in order."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Folder where Debian's package ``dataset-fashion-mnist`` installs the four ``.gz`` files."""

EXTRA_SEARCH_DIRS: dict[str, list[Path]] = {
    "mnist": [],
    "fashion_mnist": [DEBIAN_FASHION_MNIST_DIR],
}
"""Folders searched after those under the data root."""

DEFAULT_ROOT = Path("data")
DOWNLOAD_CHUNK_SIZE = 1 << 20


# The line of the missing-files error after which the ways to supply the files are listed.
SUPPLY_HEADING = "To supply them, do one of the following:"


def _check_name(name: str) -> None:
    if name not in DATASET_FOLDERS:
        raise ValueError(
            f"unknown data set name {name!r}: expected one of {', '.join(DATASET_FOLDERS)}"
        )


def _search_dirs(name: str, root: str | Path) -> list[Path]:
    root = Path(root).expanduser().absolute()
    folder = root / DATASET_FOLDERS[name]
    return [folder / "raw", folder, root, *EXTRA_SEARCH_DIRS[name]]


def _find_in_dir(directory: Path) -> dict[str, Path]:
    """Return the path of each of the four files present in the folder.

    The uncompressed file is preferred over the ``.gz`` file because it reads faster.
    """
    found = {}
    for key, stem in IDX_FILE_STEMS.items():
        for file_name in (stem, f"{stem}.gz"):
            path = directory / file_name
            if path.is_file():
                found[key] = path
                break
    return found


def _not_found_message(name: str, searched: list[tuple[Path, dict[str, Path]]]) -> str:
    lines = [
        f"{DATASET_TITLES[name]} IDX files not found. Searched these folders in order:",
    ]
    for directory, found in searched:
        if found:
            missing = [IDX_FILE_STEMS[key] for key in IDX_FILE_STEMS if key not in found]
            lines.append(f"  {directory} (incomplete, missing {', '.join(missing)})")
        else:
            lines.append(f"  {directory}")
    lines += [
        "A folder is used only when it contains all four files, each with or without .gz:",
        f"  {', '.join(IDX_FILE_STEMS.values())}",
        SUPPLY_HEADING,
        "  - set data.root=/path/to/folder to a folder that contains them",
        f"  - set data.download=true to download them into {searched[0][0]}",
    ]
    if name == "fashion_mnist":
        lines.append(
            "  - run apt-get install dataset-fashion-mnist (Debian, Ubuntu), which installs "
            f"them into {DEBIAN_FASHION_MNIST_DIR}"
        )
    return "\n".join(lines)


def find_idx_files(name: str, root: str | Path) -> dict[str, Path]:
    """Find the four IDX files of a data set.

    The folders searched, in order, are ``<root>/<Folder>/raw/``, ``<root>/<Folder>/``,
    ``<root>/`` and, for ``fashion_mnist`` only, ``/usr/share/datasets/fashion-mnist``, where
    ``<Folder>`` is ``MNIST`` or ``FashionMNIST``. The first folder that contains all four
    files wins. Each file may be raw or end in ``.gz``.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        root: The data root folder.

    Returns:
        The path of each file under the keys ``train_images``, ``train_labels``,
        ``test_images`` and ``test_labels``.

    Raises:
        ValueError: The name is unknown.
        FileNotFoundError: No folder contains all four files. The message lists every folder
            searched, the file names expected and the ways to supply the files.
    """
    _check_name(name)
    searched = []
    for directory in _search_dirs(name, root):
        found = _find_in_dir(directory)
        if len(found) == len(IDX_FILE_STEMS):
            return found
        searched.append((directory, found))
    raise FileNotFoundError(_not_found_message(name, searched))


class _IncompleteDownloadError(Exception):
    """Response body shorter or longer than its Content-Length header."""


def _fetch(url: str, destination: BinaryIO, timeout: float) -> int:
    """Write the response body of a GET request to ``destination`` and return its size."""
    # build_opener reads the proxy variables on each call, unlike the cached opener of urlopen.
    opener = urllib.request.build_opener()
    with opener.open(url, timeout=timeout) as response:
        size = 0
        while chunk := response.read(DOWNLOAD_CHUNK_SIZE):
            destination.write(chunk)
            size += len(chunk)
        content_length = response.headers.get("Content-Length")
        # read(n) returns b"" on a closed connection without raising, so check the length.
        if content_length is not None and content_length.isdigit() and size != int(content_length):
            raise _IncompleteDownloadError(
                f"incomplete download: received {size} of {content_length} bytes"
            )
    return size


def _describe_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, _InvalidIdxError):
        return f"invalid file: {error}"
    if isinstance(error, urllib.error.URLError):
        return f"failed: {error.reason}"
    return f"failed: {type(error).__name__}: {error}"


def _is_valid(path: Path, key: str) -> bool:
    try:
        tensor = read_idx(path)
    except (OSError, ValueError) as error:
        logger.warning("Downloading %s again because the present file is invalid: %s", path, error)
        return False
    if tensor.dim() != EXPECTED_NDIMS[key]:
        logger.warning(
            "Downloading %s again because it has shape %s, expected %d dimensions",
            path,
            tuple(tensor.shape),
            EXPECTED_NDIMS[key],
        )
        return False
    return True


def _find_valid_download(directory: Path, key: str) -> Path | None:
    stem = IDX_FILE_STEMS[key]
    for path in (directory / stem, directory / f"{stem}.gz"):
        if path.is_file() and _is_valid(path, key):
            return path
    return None


def _download_from_mirror(url: str, target: Path, key: str, timeout: float) -> int:
    """Download ``url`` to ``target`` through a temporary file in the same folder.

    The temporary file is renamed to ``target`` only after the whole body arrived and decodes
    as an IDX file with the number of dimensions that ``key`` expects. On any failure,
    KeyboardInterrupt included, it is deleted.
    """
    # NOTE: a process killed with SIGKILL can still leave a *.part file behind.
    descriptor, temporary_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            size = _fetch(url, file, timeout)
        tensor = _decode_idx(temporary.read_bytes(), named_gz=True)
        if tensor.dim() != EXPECTED_NDIMS[key]:
            raise _InvalidIdxError(
                f"expected {EXPECTED_NDIMS[key]} dimensions for {key}, "
                f"found shape {tuple(tensor.shape)}"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return size


def download_idx_files(
    name: str, root: str | Path, mirrors: list[str], timeout: float = 30.0
) -> dict[str, Path]:
    """Download the four IDX files of a data set into ``<root>/<Folder>/raw/``.

    Each file ``<stem>.gz`` is requested from ``<mirror><stem>.gz`` for each mirror in turn
    until one succeeds. A file is kept only after it was fully received and is valid IDX
    data, so a failed or interrupted download leaves no file behind. Files already present
    and valid, raw or gzipped, are not downloaded again.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        root: The data root folder.
        mirrors: Base URLs, such as ``DEFAULT_MIRRORS[name]``. A missing trailing slash is
            added.
        timeout: Maximum time in seconds to wait for a connection or for each read. A download
            that keeps sending data can take longer in total.

    Returns:
        The path of each file under the keys ``train_images``, ``train_labels``,
        ``test_images`` and ``test_labels``.

    Raises:
        ValueError: The name is unknown or ``mirrors`` is empty.
        RuntimeError: Every mirror failed for a file. The message lists each URL tried with
            its error and how to supply the files by hand.
    """
    _check_name(name)
    if not mirrors:
        raise ValueError(
            f"no mirrors given to download {name}: expected at least one base URL, "
            f"such as {DEFAULT_MIRRORS[name][0]}"
        )
    directory = Path(root).expanduser().absolute() / DATASET_FOLDERS[name] / "raw"
    directory.mkdir(parents=True, exist_ok=True)

    paths = {}
    for key, stem in IDX_FILE_STEMS.items():
        present = _find_valid_download(directory, key)
        if present is not None:
            logger.debug("Skipping download of %s because it is already present", present)
            paths[key] = present
            continue

        target = directory / f"{stem}.gz"
        failures = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{target.name}"
            try:
                size = _download_from_mirror(url, target, key, timeout)
            except (
                OSError,
                http.client.HTTPException,
                _InvalidIdxError,
                _IncompleteDownloadError,
            ) as error:
                reason = _describe_error(error, timeout)
                logger.warning("Download of %s failed: %s", url, reason)
                failures.append(f"  {url}: {reason}")
                continue
            logger.info("Downloaded %s (%d bytes) to %s", url, size, target)
            paths[key] = target
            break
        else:
            raise RuntimeError(
                f"Download of {target.name} for {DATASET_TITLES[name]} failed from every "
                "mirror:\n"
                + "\n".join(failures)
                + f"\nTo supply the files by hand, put {', '.join(IDX_FILE_STEMS.values())} "
                f"(each with or without .gz) into {directory}, or set data.root=/path/to/folder "
                "to a folder that contains them."
            )
    return paths


def _check_split_counts(split: str, paths: dict[str, Path], data: dict[str, torch.Tensor]) -> None:
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image and label counts differ in the {split} split: "
            f"{paths[f'{split}_images']} contains {images.shape[0]} images but "
            f"{paths[f'{split}_labels']} contains {labels.shape[0]} labels; "
            "replace both files with a matching pair, for example by downloading them again"
        )


def load_idx_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    mirrors: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Load the train and test splits of MNIST or Fashion-MNIST from IDX files.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        root: The data root folder, searched as ``find_idx_files`` describes. ``None`` means
            ``./data``.
        download: Whether to download the files into ``<root>/<Folder>/raw/`` when they are
            not found.
        mirrors: Base URLs for the download. ``None`` means ``DEFAULT_MIRRORS[name]``.

    Returns:
        ``train_images`` and ``test_images`` as uint8 tensors of shape ``(n, rows, cols)``,
        ``train_labels`` and ``test_labels`` as uint8 tensors of shape ``(n,)``.

    Raises:
        FileNotFoundError: The files are not found and ``download`` is false.
        RuntimeError: The download failed.
        ValueError: A file is invalid, has the wrong number of dimensions, image and label
            counts differ in a split, or train and test images differ in size.
    """
    root = DEFAULT_ROOT if root is None else Path(root)
    try:
        paths = find_idx_files(name, root)
    except FileNotFoundError:
        if not download:
            raise
        paths = download_idx_files(
            name, root, DEFAULT_MIRRORS[name] if mirrors is None else mirrors
        )
    folder = paths["train_images"].parent
    if folder.resolve().is_relative_to(root.resolve()):
        logger.info("Reading %s from %s", name, folder)
    else:
        logger.info("Reading %s from %s: the files are not under data.root=%s", name, folder, root)

    data = {}
    for key, path in paths.items():
        tensor = read_idx(path)
        expected_ndim = EXPECTED_NDIMS[key]
        if tensor.dim() != expected_ndim:
            kind = "images (n, rows, cols)" if expected_ndim == 3 else "labels (n,)"
            raise ValueError(
                f"{path}: expected {expected_ndim} dimensions for {kind}, found shape "
                f"{tuple(tensor.shape)}; check that the file is {IDX_FILE_STEMS[key]}"
            )
        data[key] = tensor

    _check_split_counts("train", paths, data)
    _check_split_counts("test", paths, data)
    train_size = tuple(data["train_images"].shape[1:])
    test_size = tuple(data["test_images"].shape[1:])
    if train_size != test_size:
        raise ValueError(
            f"train and test images differ in size: {paths['train_images']} contains "
            f"{train_size[0]}x{train_size[1]} images but {paths['test_images']} contains "
            f"{test_size[0]}x{test_size[1]} images; use train and test files of one data set"
        )
    return data
