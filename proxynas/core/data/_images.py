"""Decoding image trees (a folder, a tarball of one, TinyImageNet) into uint8 arrays.

ImageFolder layout (torchvision's convention): ``train/<class>/<image>`` and
``test/<class>/<image>`` (``val/`` when there is no ``test/``). Classes are the
sorted folder names and images are ordered by (class, file name), whatever order a
tarball stores them in, so a folder and its tarball give identical arrays.

A tarball is streamed twice with ``tarfile.open(path, "r|*")`` (never seeking, so a
.tar.gz costs one sequential gunzip per pass): once to list it, once to decode each
image straight into its slot of a preallocated memmap. Nothing ever holds the whole
dataset in memory, so ImageNet-1K at 64x64 (15.7 GB) builds on a 24 GB machine.

Images whose size differs from the target are centre-cropped to a square and resized
with Pillow's antialiased bicubic filter; JPEGs are first decoded at a reduced DCT
scale (``Image.draft``) that still covers the target, which makes ImageNet's
full-size JPEGs several times cheaper to decode.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from proxynas.core.data._cache import CacheWriter
from proxynas.exceptions import DatasetError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_DIRS = ("test", "val")  # the first one present is the test split
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_RESAMPLE = Image.Resampling.BICUBIC

Listing = dict[str, dict[str, list[str]]]  # split folder -> class -> member names
Members = Generator[tuple[str, bytes], None, None]  # (member, encoded bytes); a generator, so a reader can stop early


@dataclass(frozen=True)
class ImageTree:
    """A listed train/test image tree, ready to decode."""

    location: str  # the folder or tarball, for messages
    classes: tuple[str, ...]  # class folder names, sorted; label = position
    splits: dict[str, list[tuple[str, int]]]  # "train"/"test" -> [(member, label)], (class, file) order
    read: Callable[[], Members]  # every listed image


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")  # skips macOS "._x.jpg"


def _index(location: str, listing: Listing) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    test_dir = next((d for d in TEST_DIRS if d in listing), None)
    if "train" not in listing or test_dir is None:
        raise DatasetError(
            f"{location} is not an ImageFolder tree: it needs train/ and test/ (or val/) folders, "
            "each holding one folder of images per class"
        )
    train, test = listing["train"], listing[test_dir]
    if set(train) != set(test):
        raise DatasetError(
            f"class folders differ between train/ and {test_dir}/ in {location}: "
            f"only in train: {sorted(set(train) - set(test))}, only in {test_dir}: {sorted(set(test) - set(train))}; "
            "give both splits the same class folders"
        )
    classes = tuple(sorted(train))
    splits = {}
    for split, folder, by_class in (("train", "train", train), ("test", test_dir, test)):
        splits[split] = [(m, label) for label, c in enumerate(classes) for m in sorted(set(by_class[c]))]
        if not splits[split]:
            raise DatasetError(
                f"no images in {location}/{folder}/<class>/; expected files ending in {', '.join(IMG_EXTENSIONS)}"
            )
    return classes, splits


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read image {path}: {e.strerror}; check its permissions or remove it") from None


def _folder_tree(root: Path, listing: Listing) -> ImageTree:
    classes, splits = _index(str(root), listing)

    def read() -> Members:
        for entries in splits.values():
            for member, _ in entries:
                yield member, _read_file(root / member)

    return ImageTree(str(root), classes, splits, read)


def _list_images(folder: Path, prefix: str) -> list[str]:
    return sorted(f"{prefix}/{e.name}" for e in os.scandir(folder) if _is_image(e.name) and e.is_file())


def _class_dirs(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def scan_folder(root: Path) -> ImageTree:
    """List an ImageFolder directory (train/ plus test/ or val/)."""
    test_dir = next((d for d in TEST_DIRS if (root / d).is_dir()), None)
    listing = {
        split: {c.name: _list_images(Path(c.path), f"{split}/{c.name}") for c in _class_dirs(root / split)}
        for split in ("train", test_dir)
        if split and (root / split).is_dir()
    }
    return _folder_tree(root, listing)


def folder_stamps(root: Path) -> tuple[Path, ...]:
    """The paths whose size and mtime key a folder's cache: the root, split and class folders.

    Adding, removing or renaming an image changes its class folder's mtime; editing
    an image in place does not, so touch the folder (or delete the cache) after that.
    """
    splits = [root / d for d in ("train", *TEST_DIRS) if (root / d).is_dir()]
    return (root, *splits, *(Path(c.path) for s in splits for c in _class_dirs(s)))


def _tar_members(path: Path, wanted: set[str] | None = None) -> Members:
    """Stream a tarball's regular files: every name (with b"") when ``wanted`` is None, else the wanted ones' bytes."""
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if member.isfile() and (wanted is None or member.name in wanted):
                    file = None if wanted is None else tar.extractfile(member)  # a file: member.isfile()
                    yield member.name, b"" if file is None else file.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read tarball {path} ({e}); pass a .tar or .tar.gz of an ImageFolder tree") from None


def scan_tar(path: Path) -> ImageTree:
    """List a tarball of an ImageFolder tree; members may sit below a common top folder."""
    listing: Listing = {}
    for name, _ in _tar_members(path):
        parts = PurePosixPath(name).parts
        if len(parts) >= 3 and parts[-3] in ("train", *TEST_DIRS) and _is_image(parts[-1]):
            listing.setdefault(parts[-3], {}).setdefault(parts[-2], []).append(name)
    classes, splits = _index(str(path), listing)
    wanted = {member for entries in splits.values() for member, _ in entries}
    return ImageTree(str(path), classes, splits, lambda: _tar_members(path, wanted))


def scan_tinyimagenet(root: Path) -> ImageTree:
    """List TinyImageNet's official layout; its labelled val/ split serves as the test split."""
    try:
        wnids = sorted((root / "wnids.txt").read_text().split())
        train = {w: _list_images(root / "train" / w / "images", f"train/{w}/images") for w in wnids}
        val: dict[str, list[str]] = {}
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            if line.strip():  # "val_0.JPEG <tab> n03444034 <tab> bounding box..."
                file, wnid = line.split("\t")[:2]
                val.setdefault(wnid, []).append(f"val/images/{file}")
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{root} is not TinyImageNet's layout ({e}); pass the tiny-imagenet-200 folder "
            "(wnids.txt, train/<wnid>/images/, val/images/ + val/val_annotations.txt)"
        ) from None
    return _folder_tree(root, {"train": train, "val": val})


def tinyimagenet_stamps(root: Path) -> tuple[Path, ...]:
    wnids = (root / "wnids.txt").read_text().split()
    extras = [root / f for f in ("words.txt", "val/images", "val/val_annotations.txt") if (root / f).exists()]
    return (root, root / "wnids.txt", *extras, *(root / "train" / w / "images" for w in wnids))


def decode_image(data: bytes, where: str, size: int, mode: str) -> np.ndarray:
    """Encoded bytes -> uint8 (C, size, size) in ``mode`` ("L" or "RGB")."""
    try:
        with Image.open(io.BytesIO(data)) as encoded:
            encoded.draft(mode, (size, size))  # JPEG only: smallest DCT scale that still covers size
            img = encoded.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {where} ({e}); remove or replace the file") from None
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), _RESAMPLE)  # centre crop to a square, then resize
    return np.asarray(img).reshape(size, size, -1).transpose(2, 0, 1)


def probe(tree: ImageTree) -> tuple[int, str]:
    """Target (size, mode) from the tree's first stored image: its shorter side, grey or RGB."""
    images = tree.read()
    member, data = next(images)
    images.close()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return min(img.size), "L" if img.mode in _GREY_MODES else "RGB"
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read image {member} in {tree.location} ({e}); remove or replace the file") from None


def decode_tree(tree: ImageTree, writer: CacheWriter, size: int, mode: str) -> dict[str, np.memmap]:
    """Decode every image of ``tree`` into the writer's memmaps; returns them by split."""
    channels = 1 if mode == "L" else 3
    out: dict[str, np.memmap] = {}
    slots: dict[str, tuple[str, int]] = {}  # member -> (split, row)
    for split, entries in tree.splits.items():
        out[split] = writer.empty(f"{split}_images", (len(entries), channels, size, size), np.uint8)
        writer.put(f"{split}_labels", np.array([label for _, label in entries], dtype=np.int64))
        slots.update((member, (split, i)) for i, (member, _) in enumerate(entries))
    for member, data in tree.read():
        target = slots.pop(member, None)
        if target is not None:  # None: a duplicate tar member; its first copy won
            out[target[0]][target[1]] = decode_image(data, f"{member} in {tree.location}", size, mode)
    if slots:
        raise DatasetError(f"{tree.location} changed while being read ({len(slots)} images vanished); run again")
    for images in out.values():
        images.flush()
    return out


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images on [0, 1], exact, in chunks (memmap-friendly)."""
    hist = np.zeros((images.shape[1], 256), dtype=np.int64)  # (C, grey level) counts
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096]
        for c in range(images.shape[1]):
            hist[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    levels = np.arange(256) / 255.0
    count = hist.sum(axis=1)
    mean = hist @ levels / count
    std = np.sqrt(np.maximum(hist @ levels**2 / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())
