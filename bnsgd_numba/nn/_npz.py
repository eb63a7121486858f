"""Reading ``.npz`` archives with errors that name the file and the array.

``numpy.load`` reports a truncated archive as ``BadZipFile: File is not a zip
file``: the index at the end of the archive is gone. The arrays' own headers
are still there, so :func:`describe_truncation` walks them to say which array
the file ends inside.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_INDEX_SIGNATURE = b"PK\x01\x02"
_ZIP64_EXTRA_ID = 0x0001
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError)


def _member_name(raw: bytes) -> str:
    name = raw.decode("utf-8", errors="replace")
    return name[:-4] if name.endswith(".npy") else name


def _zip64_compressed_size(extra: bytes) -> int | None:
    offset = 0
    while offset + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, offset)
        if kind == _ZIP64_EXTRA_ID and size >= 16:
            return struct.unpack_from("<Q", extra, offset + 12)[0]
        offset += 4 + size
    return None


def describe_truncation(path: str | Path) -> str | None:
    """Say where a zip archive cut short ends, or None when that cannot be told.

    Walks the local headers from the start of the file; the first member
    whose header or data runs past the end of the file is the one cut off.
    """
    size = os.path.getsize(path)
    previous = None
    offset = 0
    with open(path, "rb") as handle:
        while True:
            handle.seek(offset)
            header = handle.read(_LOCAL_HEADER.size)
            if header[:4] != _LOCAL_SIGNATURE:
                if previous is not None and (not header or _INDEX_SIGNATURE.startswith(header[:4])):
                    return "every array is complete; the file ends inside the archive's index"
                if header and _LOCAL_SIGNATURE.startswith(header):
                    return f"the file ends inside the header of the member after {previous!r}"
                return None
            if len(header) < _LOCAL_HEADER.size:
                after = "the start" if previous is None else f"array {previous!r}"
                return f"the file ends inside the header of the member after {after}"
            fields = _LOCAL_HEADER.unpack(header)
            flags, compressed, name_length, extra_length = (
                fields[2], fields[7], fields[9], fields[10],
            )  # fmt: skip
            names = handle.read(name_length + extra_length)
            name = _member_name(names[:name_length])
            if len(names) < name_length + extra_length:
                return f"the file ends inside the header of array {name!r}"
            if compressed == 0xFFFFFFFF:
                compressed = _zip64_compressed_size(names[name_length:])
            if compressed is None or (flags & 0x08 and compressed == 0):
                return None  # sizes written after the data: the walk cannot skip it
            end = offset + _LOCAL_HEADER.size + name_length + extra_length + compressed
            if end > size:
                return (
                    f"the file ends inside array {name!r} "
                    f"({size} bytes; the array's data needs {end})"
                )
            previous = name
            offset = end


def read_npz(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` (default: all) of an ``.npz`` file into memory.

    Raises
    ------
    ValueError
        Naming the file, and the array where one is to blame: no such file,
        not an ``.npz`` archive, an archive cut short, arrays of ``keys``
        missing, an array that cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an .npz file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not an .npz archive")
    with open(path, "rb") as handle:
        start = handle.read(6)
    if start == b"\x93NUMPY":
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    if not start.startswith(b"PK"):
        raise ValueError(f"{path}: not an .npz archive (a zip file of .npy arrays)")
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        where = describe_truncation(path)
        if where is not None:
            raise ValueError(f"{path}: corrupt .npz archive: truncated: {where}") from None
        raise ValueError(f"{path}: corrupt .npz archive ({error})") from None
    with archive:
        wanted = list(archive.files if keys is None else keys)
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing} (found {sorted(archive.files)})")
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = archive[key]
            except _READ_ERRORS as error:
                raise ValueError(f"{path}: array {key!r} cannot be read ({error})") from None
    return arrays
