"""On-disk cache of decoded datasets, verified on every load and never trusted blindly.

One folder per dataset source: ``<cache_dir>/<name>-<key digest>/`` holds
``{train,test}_{images,labels}.npy`` and ``meta.json``. The key covers the source's
paths, sizes and mtimes, the build parameters and ``FORMAT_VERSION``, so changed data
or a new format misses the cache instead of reusing stale arrays.

Writes are atomic: every file goes to a temporary name and is ``os.replace``-d into
place, and ``meta.json`` (shapes, dtypes, byte sizes, checksums) comes last, after
the old one was deleted, so an interrupted build leaves no manifest and is rebuilt.
A load recomputes each file's crc32 (the whole file up to ``FULL_CHECKSUM_MAX_BYTES``,
as for CIFAR-10's 184 MB: BENCHMARKS.md, 'Loading CIFAR-10'; above it, ``_SAMPLED_CHUNKS``
evenly spaced chunks, so a 15.7 GB ImageNet-64 cache opens without being read whole) and checks shapes
against the manifest; any mismatch logs a warning and the caller rebuilds.
Images are opened with ``mmap_mode="c"`` (copy-on-write): never read whole into
memory, writable without touching the file, so ``torch.from_numpy`` does not warn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import zlib
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from proxynas.core.data._types import DatasetInfo
from proxynas.exceptions import DatasetError
from proxynas.runtime.outputs import cache_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FULL_CHECKSUM_MAX_BYTES = 2 * 1024**3
_SAMPLED_CHUNKS = 64
_CHUNK_BYTES = 1 << 20
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_META = "meta.json"


def default_cache_dir() -> Path:
    """``$PROXYNAS_CACHE``, else ``~/.cache/proxynas``."""
    return cache_dir()


def cache_key(name: str, stamps: tuple[Path, ...], params: dict[str, Any]) -> dict[str, Any]:
    """Everything that, when changed, must change the decoded arrays' cache (JSON-able)."""
    stat = [(str(p), p.stat()) for p in stamps]
    return {
        "format": FORMAT_VERSION,
        "dataset": name,
        "stamps": [[path, st.st_size, st.st_mtime_ns] for path, st in stat],
        "params": params,
    }


def cache_folder(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{key['dataset']}-{digest}"


def checksum(path: Path, size: int) -> str:
    """crc32 of the whole file, or of evenly spaced chunks (first and last included) above the limit."""
    crc = 0
    with open(path, "rb") as f:
        if size <= FULL_CHECKSUM_MAX_BYTES:
            while chunk := f.read(16 * _CHUNK_BYTES):
                crc = zlib.crc32(chunk, crc)
            return f"crc32:{crc:08x}"
        chunk_bytes = min(_CHUNK_BYTES, size)
        last = size - chunk_bytes  # offset of the final chunk
        for i in range(_SAMPLED_CHUNKS):
            f.seek(i * last // (_SAMPLED_CHUNKS - 1))
            crc = zlib.crc32(f.read(chunk_bytes), crc)
    return f"crc32-sampled{_SAMPLED_CHUNKS}x{_CHUNK_BYTES}:{crc:08x}"


class CacheWriter:
    """Collects a build's arrays under temporary names; ``commit`` publishes them atomically.

    Use as a context manager: an exception inside removes the temporary files.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _META).unlink(missing_ok=True)  # from here on the folder is not a valid cache
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"  # concurrent builders never collide
        self._tmp: dict[str, Path] = {}

    def _tmp_path(self, name: str) -> Path:
        if name not in ARRAYS:
            raise ValueError(f"unknown cache array {name!r}; expected one of {ARRAYS}")
        self._tmp[name] = self.folder / f"{name}.npy.tmp-{self._token}"
        return self._tmp[name]

    def empty(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
        """A preallocated, file-backed array to fill in place (large sets never sit in RAM)."""
        return np.lib.format.open_memmap(self._tmp_path(name), mode="w+", dtype=dtype, shape=shape)

    def put(self, name: str, array: np.ndarray) -> None:
        with open(self._tmp_path(name), "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    def commit(self, key: dict[str, Any], info: DatasetInfo, source: str) -> None:
        missing = set(ARRAYS) - set(self._tmp)
        if missing:
            raise ValueError(f"build wrote no {sorted(missing)}")
        records = {}
        for name, tmp in self._tmp.items():
            array = np.load(tmp, mmap_mode="r")
            size = tmp.stat().st_size
            records[name] = {
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "bytes": size,
                "checksum": checksum(tmp, size),
            }
            del array  # release the mapping before the rename
            os.replace(tmp, self.folder / f"{name}.npy")
        self._tmp.clear()
        meta = {"format": FORMAT_VERSION, "key": key, "info": info.to_dict(), "source": source, "arrays": records}
        tmp_meta = self.folder / f"{_META}.tmp-{self._token}"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, self.folder / _META)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        if exc is not None and not any(self.folder.iterdir()):
            self.folder.rmdir()  # a failed first build leaves nothing behind


class Cached(NamedTuple):
    info: DatasetInfo
    source: str  # description of where the data came from
    arrays: dict[str, np.ndarray]  # by name (ARRAYS)
    fingerprint: str  # content digest: equal for the same images and labels wherever they were read from


def fingerprint(records: dict[str, dict[str, Any]]) -> str:
    """A digest of the arrays' manifest records (shape, dtype, checksum), so no pixel is read again."""
    content = {name: [records[name][k] for k in ("shape", "dtype", "checksum")] for name in ARRAYS}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class _Invalid(Exception):
    """A cache that exists but must not be used; the message says why."""


def read_cache(folder: Path, key: dict[str, Any]) -> Cached | None:
    """(info, source, arrays) of a verified cache, or None when absent or invalid (then rebuild)."""
    try:
        meta = json.loads((folder / _META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("dataset cache %s has an unreadable manifest (%s); rebuilding", folder, e)
        return None
    try:
        return _verify(folder, meta, key)
    except (_Invalid, DatasetError, OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("dataset cache %s is invalid (%s: %s); rebuilding", folder, type(e).__name__, e)
        return None


def _verify(folder: Path, meta: dict[str, Any], key: dict[str, Any]) -> Cached:
    if meta["format"] != FORMAT_VERSION or meta["key"] != json.loads(json.dumps(key)):
        raise _Invalid("manifest is for another source or format")
    info = DatasetInfo.from_dict(meta["info"])
    arrays = {}
    for name in ARRAYS:
        record, path = meta["arrays"][name], folder / f"{name}.npy"
        size = path.stat().st_size
        if size != record["bytes"]:
            raise _Invalid(f"{path.name} has {size} bytes, expected {record['bytes']}")
        if checksum(path, size) != record["checksum"]:
            raise _Invalid(f"{path.name} fails its checksum")
        array = np.load(path, mmap_mode="c" if name.endswith("images") else None, allow_pickle=False)
        if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
            found, wanted = f"{array.dtype}{list(array.shape)}", f"{record['dtype']}{record['shape']}"
            raise _Invalid(f"{path.name} is {found}, expected {wanted}")
        arrays[name] = array
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        expected = (len(labels), info.channels, info.image_size, info.image_size)
        if images.shape != expected or images.dtype != np.uint8 or labels.dtype != np.int64:
            raise _Invalid(f"{split} arrays do not match the dataset info {expected}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < info.num_classes:
            raise _Invalid(f"{split} labels outside [0, {info.num_classes})")
    return Cached(info, meta["source"], arrays, fingerprint(meta["arrays"]))
