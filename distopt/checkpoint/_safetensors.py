"""Shard files in the safetensors layout: an 8-byte header length, a JSON header, raw bytes.

Nothing here can execute code on load: the header is JSON, the payload raw little-endian
numbers. Each tensor's CRC-32 is computed while it is written (in a helper thread, over
the same chunks the writer sends) and checked while it is read, so a checksum costs little
beyond the I/O itself. With `isal` installed (the `fast` extra) the CRC-32 is ISA-L's
vectorised one, about 3x zlib's; both give the same values.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from distopt.checkpoint._errors import CheckpointError

try:
    from isal.isal_zlib import crc32
except ImportError:  # the same checksum, slower
    crc32 = zlib.crc32

CHUNK = 1 << 24  # bytes per write/read call; the CRC of one chunk overlaps the I/O of the next
MAX_HEADER = 1 << 26

DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip
_CODES = {np.dtype(v).str: k for k, v in DTYPES.items()}


def dtype_code(dtype) -> str:
    dt = np.dtype(dtype)
    code = _CODES.get(dt.newbyteorder("<").str if dt.itemsize > 1 else dt.str)
    if code is None:
        raise CheckpointError(
            f"A checkpoint stores bool, integer and float arrays; dtype {np.dtype(dtype)} has "
            "no safetensors code. Cast it (e.g. to float32) before saving."
        )
    return code


def _chunks(buffer: memoryview):
    for start in range(0, len(buffer), CHUNK):
        yield buffer[start : start + CHUNK]


def write(path: str, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Writes `arrays` to `path` (fsynced); returns each key's CRC-32."""
    header, offset, flat = {}, 0, {}
    for key, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        flat[key] = a
        header[key] = {
            "dtype": dtype_code(a.dtype),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the payload starts 8-byte aligned
    crcs: dict[str, int] = {}
    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for key, a in flat.items():
            data = memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(b"")
            crc = 0
            for chunk in _chunks(data):
                pending = pool.submit(crc32, chunk, crc)
                f.write(chunk)
                crc = pending.result()
            crcs[key] = crc
        f.flush()
        os.fsync(f.fileno())
    return crcs


def read_header(f, path: str) -> tuple[dict, int]:
    """(header, start of the payload) of an open shard file; CheckpointError if malformed."""
    size = os.fstat(f.fileno()).st_size
    raw = f.read(8)
    if len(raw) != 8:
        raise CheckpointError(f"Shard file {path} is truncated ({size} bytes): no header.")
    (n,) = struct.unpack("<Q", raw)
    if n > min(MAX_HEADER, size - 8):
        raise CheckpointError(
            f"Shard file {path} is truncated or corrupted: its header claims {n} bytes, the "
            f"file has {size}."
        )
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"Shard file {path} has a corrupted header ({e}).") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"Shard file {path} has a corrupted header (not a JSON object).")
    return header, 8 + n


def read(f, path: str, header: dict, start: int, key: str, expected_crc: int) -> np.ndarray:
    """The tensor `key` of an open shard file, checked against its header and `expected_crc`."""
    entry = header.get(key)
    try:
        dtype = np.dtype(DTYPES[entry["dtype"]])
        shape = tuple(int(d) for d in entry["shape"])
        lo, hi = (int(x) for x in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Shard file {path} has no valid entry for tensor `{key}`.") from e
    size = os.fstat(f.fileno()).st_size
    count = int(np.prod(shape, dtype=np.int64))
    if min(shape, default=0) < 0 or hi - lo != count * dtype.itemsize or start + hi > size:
        raise CheckpointError(
            f"Shard file {path} is truncated or corrupted: tensor `{key}` should span bytes "
            f"{start + lo}..{start + hi}, the file has {size}."
        )
    out = np.empty(count, dtype=dtype)
    data = memoryview(out).cast("B") if count else memoryview(bytearray())
    f.seek(start + lo)
    got = 0
    with ThreadPoolExecutor(1) as pool:
        pending, crc = None, 0
        for chunk in _chunks(data):
            got += f.readinto(chunk)
            if pending is not None:
                crc = pending.result()
            pending = pool.submit(crc32, chunk, crc)
        if pending is not None:
            crc = pending.result()
    if got != len(data):
        raise CheckpointError(f"Shard file {path} is truncated: tensor `{key}` is incomplete.")
    if crc != expected_crc:
        raise CheckpointError(
            f"Shard file {path} is corrupted: tensor `{key}` has CRC-32 {crc:#010x}, the "
            f"manifest recorded {expected_crc:#010x}."
        )
    return out.reshape(shape)
