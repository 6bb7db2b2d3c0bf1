"""Tests for proxynas.core.data: every registry entry on tiny files in its real on-disk format,
the verified cache (hits, misses, corruption), the train/val split, and error messages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from proxynas.core.data import (
    CIFAR10_CLASSES,
    DATASETS,
    DSA_STRATEGY,
    DSA_STRATEGY_DIGITS,
    PUBLISHED_STATS,
    DatasetInfo,
    Split,
    TrainValSplit,
    _cache,
    _images,
    load_dataset,
    train_val_split,
)
from proxynas.exceptions import ArtifactError, DatasetError, UnknownNameError, UsageError

# the shared offline copy: beside the checkout (../shared), or where PROXYNAS_SHARED_DATASETS points
_SHARED = [
    Path(os.environ.get("PROXYNAS_SHARED_DATASETS", "/nonexistent")),
    Path(__file__).resolve().parents[2] / "shared" / "datasets",
    Path("/work/shared/datasets"),
]
CIFAR10_TARBALL = next(
    (d / "cifar10-jpeg.tar.gz" for d in _SHARED if (d / "cifar10-jpeg.tar.gz").is_file()),
    _SHARED[1] / "cifar10-jpeg.tar.gz",
)
CIFAR10_FILES = {**{f"data_batch_{i}": "train" for i in range(1, 6)}, "test_batch": "test"}
CIFAR100_NAMES = tuple(f"c{i}" for i in range(100))


# --- helpers --------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _png(array: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG bytes (lossless, so decoded pixels are exact)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "library errors must be one line"
    return message


# A 2-class ImageFolder tree of random 8x8 RGB PNGs: expected arrays in (class, file) order.
FOLDER_CLASSES = ("cat", "dog")
FOLDER_FILES = {
    "train": {"cat": ["0.png", "1.png", "2.png"], "dog": ["a.png", "b.png"]},
    "test": {"cat": ["x.png"], "dog": ["y.png"]},
}


@pytest.fixture
def folder_tree(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root, rng, expected = tmp_path / "tree", _rng(1), {}
    for split, by_class in FOLDER_FILES.items():
        images, labels = [], []
        for label, cls in enumerate(FOLDER_CLASSES):
            for name in by_class[cls]:
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                _write(root / split / cls / name, _png(pixels))
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels))
    _write(root / "train" / "cat" / "notes.txt", b"not an image")  # ignored: not an image extension
    _write(root / "train" / "cat" / "._0.png", b"macOS resource fork")  # ignored: hidden
    return root, expected


def _tar_of(root: Path, out: Path, prefix: str = "", shuffle: bool = False) -> Path:
    """A .tar.gz of root's files under ``prefix``, optionally stored in a shuffled order."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if shuffle:
        random.Random(0).shuffle(files)
    with tarfile.open(out, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=prefix + p.relative_to(root).as_posix())
    return out


def _assert_split(split: Split, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    np.testing.assert_array_equal(split.images.numpy(), images)
    np.testing.assert_array_equal(split.labels.numpy(), labels)


# --- torchvision datasets, from tiny files in their on-disk formats --------------------------


def _idx_ubyte(path: Path, array: np.ndarray) -> None:
    # IDX: magic (0, 0, 0x08 = uint8, ndim), big-endian uint32 dims, raw bytes
    _write(path, bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def _fake_mnist(root: Path, folder: str) -> dict:
    rng, out = _rng(2), {}
    for split, prefix, n in (("train", "train", 6), ("test", "t10k", 4)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _idx_ubyte(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _idx_ubyte(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images[:, None], labels)
    return out


def _fake_cifar(root: Path, cifar100: bool) -> dict:
    # torchvision's pickles: {"data": (n, 3072) uint8, "labels" | "fine_labels": [...]}, plus a meta file
    if cifar100:
        folder, files, classes = "cifar-100-python", {"train": "train", "test": "test"}, CIFAR100_NAMES
        label_key, meta = "fine_labels", ("meta", "fine_label_names")
    else:
        folder, files, classes = "cifar-10-batches-py", CIFAR10_FILES, CIFAR10_CLASSES
        label_key, meta = "labels", ("batches.meta", "label_names")
    rng, out = _rng(3), {"train": ([], []), "test": ([], [])}
    for file, split in files.items():
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = rng.integers(0, len(classes), 3).tolist()
        _write(root / folder / file, pickle.dumps({"data": data, label_key: labels}))
        out[split][0].append(data.reshape(-1, 3, 32, 32))
        out[split][1].extend(labels)
    _write(root / folder / meta[0], pickle.dumps({meta[1]: list(classes)}))
    return {s: (np.concatenate(images), np.array(labels)) for s, (images, labels) in out.items()}


def _fake_svhn(root: Path) -> dict:
    rng, out = _rng(4), {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N)
        y = np.array([10, 1, 2, 10, 9][:n], dtype=np.uint8)[:, None]  # digit 0 is stored as 10
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x.transpose(3, 2, 0, 1), np.where(y[:, 0] == 10, 0, y[:, 0]))
    return out


FAKE_TORCHVISION = {  # name -> (writer(root) -> expected arrays, expected class names, channels, size)
    "mnist": (lambda r: _fake_mnist(r, "MNIST"), None, 1, 28),
    "fashionmnist": (lambda r: _fake_mnist(r, "FashionMNIST"), None, 1, 28),
    "svhn": (_fake_svhn, tuple("0123456789"), 3, 32),
    "cifar10": (lambda r: _fake_cifar(r, cifar100=False), CIFAR10_CLASSES, 3, 32),
    "cifar100": (lambda r: _fake_cifar(r, cifar100=True), CIFAR100_NAMES, 3, 32),
}


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake files cannot match torchvision's md5 sums of the real ones: check existence only."""
    for module in ("cifar", "svhn"):
        monkeypatch.setattr(
            f"torchvision.datasets.{module}.check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
        )


@pytest.mark.parametrize("name", list(FAKE_TORCHVISION))
def test_torchvision_datasets_decode_their_files(name: str, tmp_path: Path, no_md5: None) -> None:
    write, class_names, channels, size = FAKE_TORCHVISION[name]
    expected = write(tmp_path / "data")
    ds = load_dataset(name, tmp_path / "data", cache_dir=tmp_path / "cache")
    for split in ("train", "test"):
        _assert_split(getattr(ds, split), *expected[split])
    assert (ds.info.name, ds.info.channels, ds.info.image_size) == (name, channels, size)
    assert (ds.info.mean, ds.info.std) == PUBLISHED_STATS[name]
    assert ds.info.dsa_strategy == (DSA_STRATEGY_DIGITS if name in ("mnist", "svhn") else DSA_STRATEGY)
    assert ds.info.num_classes == (100 if name == "cifar100" else 10)
    if class_names is not None:
        assert ds.info.class_names == class_names
    assert str(tmp_path / "data") in ds.source


@pytest.mark.parametrize("name", list(FAKE_TORCHVISION))
def test_torchvision_dataset_missing_offline_names_path_and_fix(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, tmp_path, cache_dir=tmp_path / "cache")
    message = _error(excinfo)
    assert f"not found under {tmp_path}" in message
    assert "pass --data-path to a folder holding" in message and "--download when online" in message


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n != "digits"])  # digits is bundled: no path
def test_a_data_path_that_does_not_exist_is_named_as_such(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nothere.tar.gz"
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, missing, cache_dir=tmp_path / "cache")
    message = _error(excinfo)
    assert message.startswith(f"--data-path {missing} does not exist; pass --data-path to ")
    assert f"{missing}/" not in message  # not a file searched for inside it


def test_download_flag_reaches_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, download_root: str, **kwargs: object) -> None:
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    root = tmp_path / "new"  # not there yet: a download creates it
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root, cache_dir=tmp_path / "cache", download=True)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert f"could not download CIFAR10 into {root} (network is unreachable)" in _error(excinfo)


def test_torchvision_rejecting_files_is_a_dataset_error(tmp_path: Path) -> None:
    # real md5 checks on fake files: torchvision refuses them, we say how to fix it
    _fake_cifar(tmp_path, cifar100=False)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert "torchvision rejected the CIFAR10 files" in _error(excinfo)
    assert "--download" in str(excinfo.value)


# --- ImageFolder: folder, tarball, cifar10 copies, imagenet, tinyimagenet --------------------


def test_folder_directory_and_tarball_give_the_same_arrays(folder_tree, tmp_path: Path) -> None:
    root, expected = folder_tree
    tarball = _tar_of(root, tmp_path / "tree.tar.gz", prefix="mydata/", shuffle=True)
    for source in (root, tarball):
        ds = load_dataset("folder", source, cache_dir=tmp_path / "cache")
        _assert_split(ds.train, *expected["train"])
        _assert_split(ds.test, *expected["test"])
        assert ds.info.class_names == FOLDER_CLASSES and ds.info.image_size == 8 and ds.info.channels == 3
        pixels = expected["train"][0].transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        np.testing.assert_allclose(ds.info.mean, pixels.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(ds.info.std, pixels.std(axis=1), rtol=1e-12)
        assert ds.info.dsa_strategy == DSA_STRATEGY
    assert "ImageFolder tarball" in ds.source and str(tarball) in ds.source


def test_folder_takes_first_image_size_and_mode(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    _write(root / "train" / "a" / "0.png", _png(np.full((6, 6), 10, np.uint8)))
    _write(root / "train" / "b" / "0.png", _png(np.full((12, 12), 200, np.uint8)))  # resized to 6x6
    _write(root / "val" / "a" / "0.png", _png(np.full((6, 6, 3), 90, np.uint8)))  # RGB -> grey
    _write(root / "val" / "b" / "0.png", _png(np.full((6, 6), 30, np.uint8)))
    ds = load_dataset("folder", root, cache_dir=tmp_path / "cache")
    assert ds.train.images.shape == (2, 1, 6, 6) and ds.test.images.shape == (2, 1, 6, 6)
    assert ds.train.images[1].unique().tolist() == [200]
    assert ds.test.images[0].unique().tolist() == [90]
    assert ds.info.mean == pytest.approx(((10 + 200) / 2 / 255,)) and ds.info.std == pytest.approx((95 / 255,))


def test_cifar10_from_imagefolder_gets_published_constants(tmp_path: Path) -> None:
    root = tmp_path / "c10"
    for split in ("train", "test"):
        for label, cls in enumerate(CIFAR10_CLASSES):
            _write(root / split / cls / "0.png", _png(np.full((32, 32, 3), label * 20, np.uint8)))
    ds = load_dataset("cifar10", _tar_of(root, tmp_path / "c10.tar.gz"), cache_dir=tmp_path / "cache")
    assert ds.info.class_names == CIFAR10_CLASSES and (ds.info.mean, ds.info.std) == PUBLISHED_STATS["cifar10"]
    assert ds.train.labels.tolist() == list(range(10))
    assert ds.train.images[:, 0, 0, 0].tolist() == [label * 20 for label in range(10)]


def test_cifar10_imagefolder_with_other_classes_is_refused(folder_tree, tmp_path: Path) -> None:
    root, _ = folder_tree
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", root, cache_dir=tmp_path / "cache")
    message = _error(excinfo)
    assert "is not an ImageFolder copy of cifar10" in message and "['cat', 'dog']" in message
    assert "use dataset 'folder'" in message


def test_imagenet_resizes_to_64_with_centre_crop(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    tall = np.zeros((128, 64, 3), np.uint8)
    # red, green, blue bands: only the green one survives a centre crop to 64x64
    tall[:32], tall[32:96], tall[96:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    _write(root / "train" / "n01" / "tall.png", _png(tall))
    _write(root / "train" / "n02" / "small.png", _png(np.full((50, 50, 3), 77, np.uint8)))
    _write(root / "val" / "n01" / "v.png", _png(np.full((100, 80, 3), 5, np.uint8)))
    _write(root / "val" / "n02" / "v.png", _png(np.full((64, 64, 3), 250, np.uint8)))
    ds = load_dataset("imagenet", root, cache_dir=tmp_path / "cache")
    assert ds.train.images.shape == (2, 3, 64, 64) and ds.test.images.shape == (2, 3, 64, 64)
    green = torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 64, 64)
    assert torch.equal(ds.train.images[0], green)
    assert ds.train.images[1].unique().tolist() == [77] and ds.test.images[0].unique().tolist() == [5]
    assert ds.info.class_names == ("n01", "n02") and (ds.info.mean, ds.info.std) == PUBLISHED_STATS["imagenet"]


def test_tinyimagenet_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\n")  # n03 missing
    colour = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
    annotations = []
    for w in wnids:
        for i in range(2):
            _write(root / "train" / w / "images" / f"{w}_{i}.JPEG", _jpeg(np.full((64, 64, 3), colour[w], np.uint8)))
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        annotations.append(f"val_{w}.JPEG\t{w}\t0\t0\t10\t10")
        _write(root / "val" / "images" / f"val_{w}.JPEG", _jpeg(np.full((64, 64), 128, np.uint8)))  # greyscale JPEG
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    ds = load_dataset("tinyimagenet", tmp_path, cache_dir=tmp_path / "cache")  # the folder above also works
    assert ds.info.class_names == ("goldfish", "European fire salamander", "n03")
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.test.labels.tolist() == [0, 1, 2]
    assert ds.train.images.shape == (6, 3, 64, 64) and ds.test.images.shape == (3, 3, 64, 64)
    for label, w in enumerate(sorted(wnids)):
        mean_colour = ds.train.images[2 * label].float().mean(dim=(1, 2))
        assert torch.allclose(mean_colour, torch.tensor(colour[w], dtype=torch.float), atol=3)
    assert (ds.test.images.float() - 128).abs().max() <= 2  # grey -> RGB, all channels equal
    assert (ds.info.mean, ds.info.std) == PUBLISHED_STATS["tinyimagenet"]


def test_digits_split_is_balanced_seeded_and_measured(tmp_path: Path) -> None:
    ds = load_dataset("digits", cache_dir=tmp_path / "cache")
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.train.images.shape[1:] == (1, 32, 32) and ds.info.dsa_strategy == DSA_STRATEGY_DIGITS
    totals = torch.bincount(torch.cat([ds.train.labels, ds.test.labels]), minlength=10)
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == [round(0.2 * int(n)) for n in totals]
    assert int(ds.train.images.max()) == 255 and int(ds.train.images.min()) == 0
    pixels = ds.train.images.double() / 255
    assert ds.info.mean[0] == pytest.approx(pixels.mean().item())
    assert ds.info.std[0] == pytest.approx(pixels.std(unbiased=False).item())
    again = load_dataset("digits", cache_dir=tmp_path / "other-cache")  # rebuilt from scratch: same split
    assert torch.equal(again.test.images, ds.test.images) and torch.equal(again.train.labels, ds.train.labels)


# --- the cache ------------------------------------------------------------------------------


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = _images.decode_image

    def counting(*args: object) -> np.ndarray:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(_images, "decode_image", counting)
    return calls


def _only_cache_folder(cache: Path) -> Path:
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return folder


def test_second_load_is_a_cache_hit_without_decoding(folder_tree, tmp_path: Path, monkeypatch) -> None:
    root, expected = folder_tree
    load_dataset("folder", root, cache_dir=tmp_path / "cache")

    def refuse(*args: object) -> None:
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(_images, "decode_image", refuse)
    ds = load_dataset("folder", root, cache_dir=tmp_path / "cache")
    _assert_split(ds.train, *expected["train"])
    assert sorted(p.name for p in _only_cache_folder(tmp_path / "cache").iterdir()) == [
        "meta.json",
        "test_images.npy",
        "test_labels.npy",
        "train_images.npy",
        "train_labels.npy",
    ]


def test_changed_source_misses_the_cache(folder_tree, tmp_path: Path) -> None:
    root, expected = folder_tree
    load_dataset("folder", root, cache_dir=tmp_path / "cache")
    _write(root / "train" / "dog" / "c.png", _png(np.zeros((8, 8, 3), np.uint8)))
    assert len(load_dataset("folder", root, cache_dir=tmp_path / "cache").train) == len(expected["train"][1]) + 1


def _truncate(folder: Path) -> None:
    path = folder / "train_images.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(folder: Path) -> None:
    path = folder / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage_meta(folder: Path) -> None:
    (folder / "meta.json").write_text("{not json")


def _reshape_consistently(folder: Path) -> None:
    # a valid .npy with the manifest's size and checksum updated: only the shape check can catch it
    path = folder / "train_images.npy"
    array = np.load(path)
    np.save(path, array.reshape(len(array), 3, 64))
    meta = json.loads((folder / "meta.json").read_text())
    size = path.stat().st_size
    meta["arrays"]["train_images"].update(bytes=size, checksum=_cache.checksum(path, size))
    (folder / "meta.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    "truncated": _truncate,
    "flipped byte": _flip_byte,
    "missing metadata": lambda folder: (folder / "meta.json").unlink(),
    "garbage metadata": _garbage_meta,
    "shape mismatch": _reshape_consistently,
    "missing array": lambda folder: (folder / "test_labels.npy").unlink(),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_corrupt_cache_is_rebuilt(corrupt: str, folder_tree, tmp_path: Path, count_decodes: list[int]) -> None:
    root, expected = folder_tree
    load_dataset("folder", root, cache_dir=tmp_path / "cache")
    built = count_decodes[0]
    CORRUPTIONS[corrupt](_only_cache_folder(tmp_path / "cache"))
    ds = load_dataset("folder", root, cache_dir=tmp_path / "cache")
    assert count_decodes[0] == 2 * built, "the corrupt cache was trusted"
    _assert_split(ds.train, *expected["train"])
    _assert_split(ds.test, *expected["test"])


def test_large_caches_use_sampled_checksums(folder_tree, tmp_path: Path, monkeypatch, count_decodes: list[int]) -> None:
    monkeypatch.setattr(_cache, "FULL_CHECKSUM_MAX_BYTES", 0)  # every file counts as "large"
    root, _ = folder_tree
    load_dataset("folder", root, cache_dir=tmp_path / "cache")
    folder = _only_cache_folder(tmp_path / "cache")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["arrays"]["train_images"]["checksum"].startswith("crc32-sampled")
    path = folder / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last chunk is always sampled
    path.write_bytes(bytes(data))
    built = count_decodes[0]
    load_dataset("folder", root, cache_dir=tmp_path / "cache")
    assert count_decodes[0] == 2 * built


def test_failed_build_leaves_no_cache_behind(folder_tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, expected = folder_tree
    real, calls = _images.decode_image, [0]

    def fail_third(*args: object) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 3:
            raise DatasetError("simulated failure")
        return real(*args)

    monkeypatch.setattr(_images, "decode_image", fail_third)
    with pytest.raises(DatasetError, match="simulated failure"):
        load_dataset("folder", root, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no manifest, no temporary files, no empty folder
    monkeypatch.setattr(_images, "decode_image", real)
    _assert_split(load_dataset("folder", root, cache_dir=tmp_path / "cache").train, *expected["train"])


def test_cached_images_are_memory_mapped(folder_tree, tmp_path: Path) -> None:
    root, _ = folder_tree
    load_dataset("folder", root, cache_dir=tmp_path / "cache")
    folder = _only_cache_folder(tmp_path / "cache")
    key = json.loads((folder / "meta.json").read_text())["key"]
    arrays = _cache.read_cache(folder, key).arrays
    assert isinstance(arrays["train_images"], np.memmap) and arrays["train_images"].flags.writeable


def test_cache_dir_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "env-cache"))
    load_dataset("digits")
    assert [p.name.split("-")[0] for p in (tmp_path / "env-cache").iterdir()] == ["digits"]


# --- bad input: one line naming the problem and the fix --------------------------------------


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        load_dataset("cifar11")
    message = _error(excinfo)
    assert "unknown dataset 'cifar11'" in message and all(name in message for name in DATASETS.names())


def test_folder_with_no_images(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / "empty" / split / "a").mkdir(parents=True)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("folder", tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert f"no images in {tmp_path / 'empty'}/train/<class>/" in _error(excinfo)


@pytest.mark.parametrize("as_tarball", [False, True])
@pytest.mark.parametrize("layout", [["train/a/0.png"], ["test/a/0.png", "val/a/0.png"], ["a/0.png"]])
def test_not_an_imagefolder_tree(layout: list[str], as_tarball: bool, tmp_path: Path) -> None:
    for member in layout:
        _write(tmp_path / "src" / member, _png(np.zeros((4, 4, 3), np.uint8)))
    source = _tar_of(tmp_path / "src", tmp_path / "bad.tar.gz") if as_tarball else tmp_path / "src"
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("folder", source, cache_dir=tmp_path / "cache")
    assert f"{source} is not an ImageFolder tree: it needs train/ and test/ (or val/)" in _error(excinfo)


def test_file_that_is_not_a_tarball(tmp_path: Path) -> None:
    (tmp_path / "x.tar.gz").write_text("plain text")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("folder", tmp_path / "x.tar.gz", cache_dir=tmp_path / "cache")
    assert f"cannot read tarball {tmp_path / 'x.tar.gz'}" in _error(excinfo)


def test_mismatched_class_folders_are_named(tmp_path: Path) -> None:
    for member in ("train/a/0.png", "train/b/0.png", "test/a/0.png", "test/c/0.png"):
        _write(tmp_path / "src" / member, _png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("folder", tmp_path / "src", cache_dir=tmp_path / "cache")
    message = _error(excinfo)
    assert "class folders differ between train/ and test/" in message
    assert "only in train: ['b'], only in test: ['c']" in message


@pytest.mark.parametrize("as_tarball", [False, True])
def test_unreadable_image_is_named(as_tarball: bool, folder_tree, tmp_path: Path) -> None:
    root, _ = folder_tree
    _write(root / "train" / "dog" / "broken.png", b"\x89PNG garbage")
    source = _tar_of(root, tmp_path / "t.tar.gz") if as_tarball else root
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("folder", source, cache_dir=tmp_path / "cache")
    assert f"cannot read image train/dog/broken.png in {source}" in _error(excinfo)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("folder", "ImageFolder data not found: searched nowhere (no --data-path given); pass --data-path to"),
        ("imagenet", "ImageNet-1K not found: searched nowhere (no --data-path given)"),
    ],
)
def test_tree_datasets_need_a_data_path(name: str, expected: str) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name)
    assert expected in _error(excinfo)


def test_tinyimagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("tinyimagenet", tmp_path, cache_dir=tmp_path / "cache")
    assert f"TinyImageNet not found under {tmp_path} (no wnids.txt)" in _error(excinfo)


# --- containers and splits --------------------------------------------------------------------


def test_class_indices_are_grouped_and_cached() -> None:
    split = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.tensor([2, 0, 1, 0, 2]), num_classes=4)
    indices = split.class_indices()
    assert [i.tolist() for i in indices] == [[1, 3], [2], [0, 4], []]
    assert split.class_indices() is indices


CIFAR_INFO = DatasetInfo("cifar10", 3, 32, 10, CIFAR10_CLASSES, *PUBLISHED_STATS["cifar10"], DSA_STRATEGY)


def test_normalise_and_denormalise() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    x = CIFAR_INFO.normalise(images)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    assert x[1, 0, 0, 0].item() == pytest.approx((1 - 0.4914) / 0.2023)
    assert x[0, 2, 1, 1].item() == pytest.approx(-0.4465 / 0.2010)
    assert torch.allclose(CIFAR_INFO.denormalise(x), images.float() / 255, atol=1e-6)
    assert CIFAR_INFO.denormalise(torch.full((3, 1, 1), 100.0)).max().item() == 1.0
    with pytest.raises(TypeError):
        CIFAR_INFO.normalise(images.float())


def test_info_round_trips_through_json() -> None:
    assert DatasetInfo.from_dict(json.loads(json.dumps(CIFAR_INFO.to_dict()))) == CIFAR_INFO
    with pytest.raises(DatasetError):
        DatasetInfo("x", 3, 32, 2, ("a",), (0.5,) * 3, (0.5,) * 3, DSA_STRATEGY)


def _labels(counts: list[int]) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]


def test_train_val_split_is_balanced_disjoint_and_complete() -> None:
    labels = _labels([50, 30, 7, 25])
    split = train_val_split(labels, 0.1, seed=3)
    assert torch.bincount(labels[split.val_idx], minlength=4).tolist() == [5, 3, 1, 2]  # round(2.5) == 2
    assert split.train_idx.dtype == split.val_idx.dtype == torch.int64
    for idx in (split.train_idx, split.val_idx):
        assert torch.equal(idx, idx.sort().values)
    assert torch.equal(torch.cat([split.train_idx, split.val_idx]).sort().values, torch.arange(len(labels)))


def test_train_val_split_depends_only_on_its_seed() -> None:
    labels = _labels([50, 30, 7, 25])
    torch.manual_seed(1)
    first = train_val_split(labels, 0.2, seed=0)
    torch.manual_seed(2)
    assert torch.equal(train_val_split(labels, 0.2, seed=0).val_idx, first.val_idx)
    assert not torch.equal(train_val_split(labels, 0.2, seed=1).val_idx, first.val_idx)


def test_train_val_split_record_round_trips() -> None:
    split = train_val_split(_labels([20, 10]), 0.1, seed=7)
    record = json.loads(json.dumps(split.to_dict()))
    assert record["fingerprint"] == hashlib.sha256(np.asarray(split.val_idx, dtype="<i8").tobytes()).hexdigest()
    again = TrainValSplit.from_dict(record)
    assert torch.equal(again.train_idx, split.train_idx) and torch.equal(again.val_idx, split.val_idx)
    assert (again.seed, again.val_fraction, again.fingerprint) == (7, 0.1, split.fingerprint)
    record["val_idx"][0] += 1
    with pytest.raises(ArtifactError):
        TrainValSplit.from_dict(record)


def test_train_val_split_rejects_bad_fraction() -> None:
    with pytest.raises(UsageError):
        train_val_split(torch.zeros(4, dtype=torch.int64), 1.0)


# --- the real CIFAR-10 tarball -----------------------------------------------------------------


@pytest.fixture(scope="session")
def cifar10_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cifar10-cache")
    load_dataset("cifar10", CIFAR10_TARBALL, cache_dir=cache)  # decodes 60,000 JPEGs once per run (~12 s)
    return cache


@pytest.mark.skipif(not CIFAR10_TARBALL.is_file(), reason="the shared offline CIFAR-10 is not mounted here")
def test_cifar10_tarball_for_real(cifar10_cache: Path) -> None:
    start = time.perf_counter()
    ds = load_dataset("cifar10", CIFAR10_TARBALL, cache_dir=cifar10_cache)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"cached CIFAR-10 load took {elapsed:.2f} s"
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.info.class_names == CIFAR10_CLASSES and (ds.info.mean, ds.info.std) == PUBLISHED_STATS["cifar10"]
    assert [len(i) for i in ds.train.class_indices()] == [5000] * 10
    assert [len(i) for i in ds.test.class_indices()] == [1000] * 10
    channel_means = ds.train.images.numpy().reshape(50000, 3, -1).mean(axis=(0, 2)) / 255
    np.testing.assert_allclose(channel_means, [0.4913, 0.4821, 0.4465], atol=1e-4)  # README's measured values
