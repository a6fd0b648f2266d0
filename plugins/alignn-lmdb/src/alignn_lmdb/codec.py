"""The record format: named numpy arrays as raw bytes behind a small JSON header.

Why not pickle (upstream's choice): unpickling runs code chosen by whoever wrote the file, so a
cache downloaded or shared with someone would be an executable. Here a record is

```
MAGIC (8 bytes) | header length (uint32, little-endian) | header (UTF-8 JSON) | pad | data
```

The header names every array with its dtype, shape, and the offset/length of its bytes in the
data section (each array starts on an 8-byte boundary, so ``np.frombuffer`` views are aligned).
Decoding only ever calls ``json.loads`` and ``np.frombuffer`` with a whitelisted numeric dtype,
and checks every offset and length against the buffer: a damaged or hostile value is refused
with a :class:`~alignn_core.errors.DataError`, never interpreted.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from alignn_core.errors import DataError

MAGIC = b"ALGNREC\x01"
"""First bytes of every record; the last byte is the record layout version."""

FORMAT_VERSION = 1
"""Version of the cache layout (record encoding, keys, manifest); part of every manifest."""

ALIGN = 8
_LENGTH = struct.Struct("<I")
_PREFIX = len(MAGIC) + _LENGTH.size
MAX_HEADER_BYTES = 1 << 20

_NUMERIC = "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64"
ALLOWED_DTYPES = frozenset(np.dtype(name).str for name in _NUMERIC.split())
"""Plain numeric dtypes in little-endian form; object, void and structured dtypes are refused."""


@dataclass
class DecodedRecord:
    """One cached sample: its id and record index, the backend's graph arrays, the targets."""

    id: str
    index: int
    graph: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.require(array, requirements="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype.str not in ALLOWED_DTYPES:
        raise TypeError(f"cannot cache an array of dtype {array.dtype} (numeric dtypes only)")
    return array


def encode_record(
    sample_id: str,
    index: int,
    graph: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
) -> bytes:
    """Serialise one sample; the inverse of :func:`decode_record`."""
    chunks: list[bytes] = []
    offset = 0
    sections: dict[str, list[list]] = {"graph": [], "targets": []}
    for section, arrays in (("graph", graph), ("targets", targets)):
        for name, value in arrays.items():
            array = _little_endian(np.asarray(value))
            data = array.tobytes()
            sections[section].append([name, array.dtype.str, list(array.shape), offset,
                                      len(data)])  # fmt: skip
            pad = -len(data) % ALIGN
            chunks.append(data + b"\0" * pad)
            offset += len(data) + pad
    body = b"".join(chunks)
    header = {"id": sample_id, "index": int(index), "crc32": zlib.crc32(body), **sections}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-(_PREFIX + len(header_bytes)) % ALIGN)
    return MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + body


def _refuse(where: str, reason: str) -> DataError:
    return DataError(
        f"{where}: {reason}; refusing to decode it (the cache is damaged or was not written by "
        "alignn-lmdb): rebuild it with read_existing false or `alignn cache build`"
    )


def _arrays(entries: object, data: memoryview, where: str) -> dict[str, np.ndarray]:
    if not isinstance(entries, list):
        raise _refuse(where, "malformed header")
    arrays = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 5):
            raise _refuse(where, "malformed array entry in header")
        name, dtype, shape, offset, nbytes = entry
        if not isinstance(name, str) or dtype not in ALLOWED_DTYPES:
            raise _refuse(where, f"array {name!r} has a non-numeric dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise _refuse(where, f"array {name!r} has an invalid shape {shape!r}")
        if not (type(offset) is int and type(nbytes) is int and offset >= 0
                and offset + nbytes <= len(data)):  # fmt: skip
            raise _refuse(where, f"array {name!r} points outside the record")
        count = int(np.prod(shape, dtype=np.int64))
        if count * np.dtype(dtype).itemsize != nbytes:
            raise _refuse(where, f"array {name!r}: shape {shape} does not match {nbytes} bytes")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(
            tuple(shape)
        )
    return arrays


def decode_record(value: bytes | memoryview, where: str, check_crc: bool = False) -> DecodedRecord:
    """Parse a record written by :func:`encode_record`, validating every field.

    The arrays are read-only views of ``value``; callers copy what they keep (graph backends'
    ``from_arrays`` do). ``check_crc`` also verifies the checksum of the data section (what
    ``alignn cache verify`` does; training skips it: LMDB itself does not tear records).
    """
    view = memoryview(value)
    if len(view) < _PREFIX or bytes(view[: len(MAGIC)]) != MAGIC:
        start = bytes(view[:12])
        raise _refuse(where, f"not an alignn-lmdb record (starts with {start!r})")
    (header_length,) = _LENGTH.unpack_from(view, len(MAGIC))
    if header_length > MAX_HEADER_BYTES or _PREFIX + header_length > len(view):
        raise _refuse(where, "truncated or oversized record header")
    try:
        header = json.loads(bytes(view[_PREFIX : _PREFIX + header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _refuse(where, "record header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse(where, "record header is not a JSON object")
    data = view[_PREFIX + header_length :]
    sample_id, index = header.get("id"), header.get("index")
    if not isinstance(sample_id, str) or type(index) is not int:
        raise _refuse(where, "record header lacks the sample id or index")
    if check_crc and zlib.crc32(data) != header.get("crc32"):
        raise _refuse(where, "checksum mismatch")
    return DecodedRecord(
        id=sample_id,
        index=index,
        graph=_arrays(header.get("graph"), data, where),
        targets=_arrays(header.get("targets"), data, where),
    )
