"""Reading and writing of IDX files, the format of the MNIST and Fashion-MNIST files.

An IDX file starts with a 4-byte magic number: two zero bytes, a type code and the number of
dimensions. One big-endian uint32 size per dimension follows, then the data in C order. Only
type code 0x08 (unsigned byte) with 1 dimension (labels) or 3 dimensions (images) is supported.
Files may be gzip-compressed, which is detected from the gzip magic bytes.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

GZIP_MAGIC = b"\x1f\x8b"
UBYTE_TYPE_CODE = 0x08
SUPPORTED_NDIMS = (1, 3)
REDOWNLOAD_HINT = "delete the file and download it again"


class _InvalidIdxError(ValueError):
    """Problem in IDX or gzip data, with a message that does not name the file."""


def _describe_payload(dims: tuple[int, ...]) -> str:
    size = math.prod(dims)
    if len(dims) == 1:
        return f"{dims[0]} labels ({size} bytes)"
    shape = "x".join(str(dim) for dim in dims[1:])
    return f"{dims[0]} images of {shape} ({size} bytes)"


def _decompress(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    # gzip raises BadGzipFile for a wrong header, EOFError for a stream cut short and zlib.error
    # for corrupt deflate data.
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as error:
        raise _InvalidIdxError(f"invalid gzip data ({type(error).__name__}: {error})") from None


def _check_magic(data: bytes) -> int:
    if len(data) < 4:
        raise _InvalidIdxError(
            f"truncated IDX file: expected a 4-byte magic number, found {len(data)} bytes"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if data[:2] != b"\x00\x00":
        raise _InvalidIdxError(
            f"invalid IDX magic number 0x{magic:08x}: expected 0x00000801 (labels) or "
            "0x00000803 (images), so this is not an IDX file"
        )
    type_code, ndim = data[2], data[3]
    if type_code != UBYTE_TYPE_CODE:
        raise _InvalidIdxError(
            f"unsupported IDX type code 0x{type_code:02x} in magic number 0x{magic:08x}: "
            f"expected 0x{UBYTE_TYPE_CODE:02x} (unsigned byte)"
        )
    if ndim not in SUPPORTED_NDIMS:
        raise _InvalidIdxError(
            f"unsupported number of IDX dimensions {ndim} in magic number 0x{magic:08x}: "
            "expected 1 (labels) or 3 (images)"
        )
    return ndim


def _decode_idx(data: bytes, named_gz: bool) -> torch.Tensor:
    """Decode gzipped or raw IDX bytes into a uint8 tensor.

    Raises:
        _InvalidIdxError: The data is not valid gzip or IDX data.
    """
    if data[:2] == GZIP_MAGIC:
        data = _decompress(data)
    elif named_gz and data[:2] != b"\x00\x00":
        # A raw IDX file under a .gz name is still readable, so only reject data that is
        # neither gzip nor IDX.
        found = data[:2].hex(" ") if data else "an empty file"
        raise _InvalidIdxError(
            f"invalid gzip data: expected the gzip magic bytes 1f 8b, found {found}"
        )

    ndim = _check_magic(data)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise _InvalidIdxError(
            f"truncated IDX header: expected {ndim} dimension sizes ({4 * ndim} bytes) after "
            f"the magic number, found {len(data) - 4} bytes"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = math.prod(dims)
    found_size = len(data) - header_size
    if found_size < expected_size:
        raise _InvalidIdxError(
            f"truncated IDX file: header declares {_describe_payload(dims)} "
            f"but only {found_size} bytes follow"
        )
    if found_size > expected_size:
        raise _InvalidIdxError(
            f"IDX file has {found_size - expected_size} trailing bytes: header declares "
            f"{_describe_payload(dims)} but {found_size} bytes follow"
        )

    # frombuffer shares the read-only bytes, so copy once into memory that torch may write.
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
    return torch.from_numpy(array.copy())


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes, gzipped or raw.

    Args:
        path: The file. Gzip compression is detected from the content, not the name.

    Returns:
        A uint8 tensor shaped by the header: ``(n,)`` for labels, ``(n, rows, cols)`` for images.

    Raises:
        ValueError: The file is not valid gzip or IDX data, has an unsupported type or number
            of dimensions, or its size does not match the header. The message starts with
            the path.
        OSError: The file cannot be read, for example because it does not exist.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return _decode_idx(data, named_gz=path.name.endswith(".gz"))
    except _InvalidIdxError as error:
        raise ValueError(f"{path}: {error}; {REDOWNLOAD_HINT}") from None


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file, gzipped when the path ends in ``.gz``.

    Args:
        path: The file to write. Its folder must exist.
        tensor: A uint8 tensor with 1 dimension (labels) or 3 dimensions (images).

    Raises:
        TypeError: The tensor is not of dtype uint8.
        ValueError: The tensor has neither 1 nor 3 dimensions.
    """
    if tensor.dtype != torch.uint8:
        raise TypeError(f"write_idx expects a torch.uint8 tensor, got dtype {tensor.dtype}")
    if tensor.dim() not in SUPPORTED_NDIMS:
        raise ValueError(
            f"write_idx expects 1 dimension (labels) or 3 dimensions (images), "
            f"got shape {tuple(tensor.shape)}"
        )

    header = bytes([0, 0, UBYTE_TYPE_CODE, tensor.dim()]) + struct.pack(
        f">{tensor.dim()}I", *tensor.shape
    )
    data = header + tensor.detach().cpu().contiguous().numpy().tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        # mtime=0 makes the output depend only on the tensor.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)
