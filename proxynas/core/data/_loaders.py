"""The dataset registry and ``load_dataset``: locate a source, decode it once, serve it from the cache.

Each ``DATASETS`` entry is a locator ``(data_path, download) -> Source``: it checks
the data is there (raising ``DatasetError`` with the path searched and how to provide
it), names the files whose size and mtime key the cache, and knows how to decode
them. ``load_dataset`` decodes only on a cache miss.

Normalisation: the published constants of docs/protocol.md §1 where the paper has them
(CIFAR-10 read from an ImageFolder copy included), else the mean/std measured on the
train split. DSA strategy (docs/protocol.md §3): all families, minus ``flip`` for digits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from proxynas.core.data._cache import CacheWriter, cache_folder, cache_key, default_cache_dir, read_cache
from proxynas.core.data._images import (
    channel_stats,
    decode_tree,
    folder_stamps,
    probe,
    scan_folder,
    scan_tar,
    scan_tinyimagenet,
    tinyimagenet_stamps,
)
from proxynas.core.data._types import Dataset, DatasetInfo, Split, train_val_split
from proxynas.exceptions import DatasetError
from proxynas.runtime.registry import Registry

logger = logging.getLogger(__name__)

Stats = tuple[tuple[float, ...], tuple[float, ...]]
PUBLISHED_STATS: dict[str, Stats] = {  # (mean, std) per channel, docs/protocol.md §1
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DSA_STRATEGY_DIGITS = "color_crop_cutout_scale_rotate"  # a mirrored digit is another glyph
_DIGIT_DATASETS = {"mnist", "svhn", "digits"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_SIZE = 64  # ImageNet-1K is downsampled once, while building the cache
DIGITS_SIZE = 32  # 8x8 digits upsampled so every ConvNet depth (1-4 poolings) has pixels left
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def default_data_root() -> Path:
    """Where downloadable datasets live without --data-path: ``$PROXYNAS_DATA``, else ``<cache>/raw``."""
    return Path(os.environ.get("PROXYNAS_DATA") or default_cache_dir() / "raw").expanduser().resolve()


@dataclass(frozen=True)
class Source:
    """A located dataset: what keys its cache and how to decode it."""

    description: str  # provenance, e.g. "/data/cifar10-jpeg.tar.gz (ImageFolder tarball)"
    stamps: tuple[Path, ...]  # files and folders whose size + mtime key the cache
    build: Callable[[CacheWriter], DatasetInfo]  # decodes both splits into the writer
    params: dict[str, Any] = field(default_factory=dict)  # build settings that change the arrays


Locator = Callable[[Path | None, bool], Source]
DATASETS: Registry[Locator] = Registry("dataset")


def _make_info(name: str, class_names: tuple[str, ...], train_images: np.ndarray) -> DatasetInfo:
    """Info for uint8 (N, C, S, S) train images: published mean/std when docs/protocol.md §1 has them, else measured."""
    mean, std = PUBLISHED_STATS.get(name) or channel_stats(train_images)
    dsa = DSA_STRATEGY_DIGITS if name in _DIGIT_DATASETS else DSA_STRATEGY
    _, channels, size, _ = train_images.shape
    return DatasetInfo(name, channels, size, len(class_names), tuple(class_names), mean, std, dsa)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- torchvision datasets ---------------------------------------------------------------

_TO_NCHW = {  # the axes of each torchvision class's .data array -> (N, C, H, W)
    "NHW": lambda a: a[:, None],
    "NHWC": lambda a: a.transpose(0, 3, 1, 2),
    "NCHW": lambda a: a,
}
_TRAIN_FLAG = ({"train": True}, {"train": False})
_SPLIT_ARG = ({"split": "train"}, {"split": "test"})
_MNIST_FILES = tuple(f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1)))


@dataclass(frozen=True)
class _TorchvisionSpec:
    name: str  # registry name
    title: str  # torchvision class name
    folder: str  # where torchvision keeps the files, relative to the root
    files: tuple[str, ...]  # the files it reads there (uncompressed)
    split_kwargs: tuple[Mapping[str, Any], Mapping[str, Any]]  # constructor arguments: train, test
    layout: str  # axes of .data, a key of _TO_NCHW
    labels: str = "targets"  # attribute with the labels
    class_names: tuple[str, ...] | None = None  # None: the dataset's .classes
    hint: str = ""  # what --data-path should hold, when not simply `folder`


_TORCHVISION = {
    s.name: s
    for s in (
        _TorchvisionSpec("mnist", "MNIST", "MNIST/raw", _MNIST_FILES, _TRAIN_FLAG, "NHW"),
        _TorchvisionSpec("fashionmnist", "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, _TRAIN_FLAG, "NHW"),
        _TorchvisionSpec(
            "svhn",
            "SVHN",
            ".",
            ("train_32x32.mat", "test_32x32.mat"),
            _SPLIT_ARG,
            "NCHW",
            labels="labels",
            class_names=tuple("0123456789"),
            hint="train_32x32.mat and test_32x32.mat",
        ),
        _TorchvisionSpec(
            "cifar10",
            "CIFAR10",
            "cifar-10-batches-py",
            (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
            _TRAIN_FLAG,
            "NHWC",
            hint="cifar-10-batches-py/ (or an ImageFolder copy of CIFAR-10: train/ and test/, or a .tar.gz of them)",
        ),
        _TorchvisionSpec("cifar100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"), _TRAIN_FLAG, "NHWC"),
    )
}


def _torchvision(spec: _TorchvisionSpec, root: Path, download: bool, kwargs: Mapping[str, Any]) -> Any:
    from torchvision import datasets  # imported lazily: slow to import, and a cache hit never needs it

    try:
        return getattr(datasets, spec.title)(root, download=download, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:  # urllib's URLError is an OSError
        if download:
            fix = f"check the network, or pass --data-path to a folder holding {spec.hint or spec.folder + '/'}"
            raise DatasetError(f"could not download {spec.title} into {root} ({_one_line(e)}); {fix}") from None
        raise DatasetError(
            f"torchvision rejected the {spec.title} files under {root} ({_one_line(e)}); "
            "delete them and run again with --download"
        ) from None


def _build_torchvision(spec: _TorchvisionSpec, root: Path, writer: CacheWriter) -> DatasetInfo:
    images = {}
    for split, kwargs in zip(("train", "test"), spec.split_kwargs, strict=True):
        data = _torchvision(spec, root, False, kwargs)
        images[split] = _TO_NCHW[spec.layout](np.asarray(data.data))
        writer.put(f"{split}_images", images[split])
        writer.put(f"{split}_labels", np.asarray(getattr(data, spec.labels), dtype=np.int64))
    return _make_info(spec.name, spec.class_names or tuple(data.classes), images["train"])


def _locate_torchvision(spec: _TorchvisionSpec, data_path: Path | None, download: bool) -> Source:
    root = data_path or default_data_root()
    fix = f"pass --data-path to a folder holding {spec.hint or spec.folder + '/'}, or --download when online"
    if download:  # torchvision creates the folder it downloads into
        for kwargs in spec.split_kwargs:
            _torchvision(spec, root, True, kwargs)
    else:
        _require_given(data_path, fix)
    folder = (root / spec.folder).resolve()
    missing = next((f for f in spec.files if not (folder / f).is_file()), None)
    if missing is not None:
        raise DatasetError(f"{spec.title} not found under {root} (no {folder / missing}); {fix}")
    return Source(
        f"{folder} (torchvision {spec.title})",
        tuple(folder / f for f in spec.files),
        partial(_build_torchvision, spec, root),
    )


# --- image trees: ImageFolder folders and tarballs, ImageNet, TinyImageNet ----------------


def _is_tree(path: Path) -> bool:
    return path.is_file() or (path / "train").is_dir()


def _build_tree(
    name: str, path: Path, size: int | None, mode: str | None, classes: tuple[str, ...] | None, writer: CacheWriter
) -> DatasetInfo:
    tree = scan_tar(path) if path.is_file() else scan_folder(path)
    if classes is not None and tree.classes != classes:
        raise DatasetError(
            f"{path} is not an ImageFolder copy of {name}: its class folders {list(tree.classes)} "
            f"differ from {list(classes)}; use dataset 'folder' for other data"
        )
    if tree.classes == CIFAR10_CLASSES and name == "folder":
        logger.info("%s looks like CIFAR-10; load it as 'cifar10' to get the published mean/std", path)
    size, mode = (size, mode) if size and mode else probe(tree)
    images = decode_tree(tree, writer, size, mode)
    return _make_info(name, tree.classes, images["train"])


def _tree_source(
    name: str, path: Path, *, size: int | None = None, mode: str | None = None, classes: tuple[str, ...] | None = None
) -> Source:
    kind = "ImageFolder tarball" if path.is_file() else "ImageFolder"
    stamps = (path,) if path.is_file() else folder_stamps(path)
    build = partial(_build_tree, name, path, size, mode, classes)
    return Source(f"{path} ({kind})", stamps, build, {"size": size, "mode": mode})


def _require_given(data_path: Path | None, fix: str) -> None:
    """A --data-path that is not there (a typo, an unmounted disk) is named as such, not as a file missing inside it."""
    if data_path is not None and not data_path.exists():
        raise DatasetError(f"--data-path {data_path} does not exist; {fix}")


def _require_tree(title: str, data_path: Path | None, hint: str) -> Path:
    fix = f"pass --data-path to {hint}"
    if data_path is None:
        raise DatasetError(f"{title} not found: searched nowhere (no --data-path given); {fix}")
    _require_given(data_path, fix)  # an existing non-tree fails later, naming what is missing
    return data_path


def _cifar10(data_path: Path | None, download: bool) -> Source:
    """CIFAR-10 from torchvision's pickles, or from an ImageFolder copy (folder or tarball)."""
    if data_path is not None and _is_tree(data_path):
        return _tree_source("cifar10", data_path, size=32, mode="RGB", classes=CIFAR10_CLASSES)
    return _locate_torchvision(_TORCHVISION["cifar10"], data_path, download)


def _imagenet(data_path: Path | None, download: bool) -> Source:
    """ImageNet-1K from an ImageFolder tree (train/<wnid>/, val/<wnid>/), downsampled to 64x64 (no download)."""
    hint = "an ImageFolder tree (train/<wnid>/, val/<wnid>/) or a .tar.gz of one; ImageNet cannot be downloaded"
    path = _require_tree("ImageNet-1K", data_path, hint)
    return _tree_source("imagenet", path, size=IMAGENET_SIZE, mode="RGB")


def _folder(data_path: Path | None, download: bool) -> Source:
    """Any ImageFolder tree or tarball of one; size and colour mode follow its first image, stats are measured."""
    hint = "an ImageFolder tree (train/<class>/ plus test/<class>/ or val/<class>/) or a .tar.gz of one"
    return _tree_source("folder", _require_tree("ImageFolder data", data_path, hint))


def _tinyimagenet(data_path: Path | None, download: bool) -> Source:
    """TinyImageNet (200 classes, 64x64) in its official layout; the labelled val/ split is the test split."""
    fix = (
        "pass --data-path to the unpacked tiny-imagenet-200 folder (wnids.txt, train/, val/) "
        "from http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    )
    _require_given(data_path, fix)
    root = data_path or default_data_root()
    if (root / "tiny-imagenet-200").is_dir():  # the folder that holds the unpacked zip
        root = root / "tiny-imagenet-200"
    if not (root / "wnids.txt").is_file():
        raise DatasetError(f"TinyImageNet not found under {root} (no wnids.txt); {fix}")
    return Source(f"{root} (TinyImageNet)", tinyimagenet_stamps(root), partial(_build_tinyimagenet, root))


def _build_tinyimagenet(root: Path, writer: CacheWriter) -> DatasetInfo:
    tree = scan_tinyimagenet(root)
    words = root / "words.txt"  # "n01443537 <tab> goldfish, Carassius auratus": keep the first name
    lines = words.read_text().splitlines() if words.is_file() else []
    names = dict(line.split("\t", 1) for line in lines if "\t" in line)
    class_names = tuple(names.get(w, w).split(",")[0].strip() for w in tree.classes)
    images = decode_tree(tree, writer, 64, "RGB")
    return _make_info("tinyimagenet", class_names, images["train"])


# --- scikit-learn digits: real data that needs no download ---------------------------------


def _digits(data_path: Path | None, download: bool) -> Source:
    """UCI handwritten digits bundled with scikit-learn: 1,797 images, 8x8 upsampled to 32x32, 80/20 split."""
    sklearn = importlib.util.find_spec("sklearn")  # finds the file without importing sklearn (slow)
    if sklearn is None or sklearn.origin is None:
        raise DatasetError("dataset 'digits' needs scikit-learn; install it with `pip install scikit-learn`")
    data_file = Path(sklearn.origin).parent / "datasets" / "data" / "digits.csv.gz"
    description = (
        f"scikit-learn load_digits() ({data_file}), 8x8 -> {DIGITS_SIZE}x{DIGITS_SIZE} bilinear; "
        f"test split: class-balanced {DIGITS_TEST_FRACTION:.0%}, seed {DIGITS_SPLIT_SEED}"
    )
    params = {"size": DIGITS_SIZE, "test_fraction": DIGITS_TEST_FRACTION, "seed": DIGITS_SPLIT_SEED}
    return Source(description, (data_file,), _build_digits, params)


def _build_digits(writer: CacheWriter) -> DatasetInfo:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(bunch.images).float().mul_(255 / 16)[:, None]  # (1797, 1, 8, 8), levels 0..16 -> 0..255
    up = F.interpolate(grey, size=DIGITS_SIZE, mode="bilinear", align_corners=False)  # convex: stays in 0..255
    images = up.round_().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    split = train_val_split(torch.from_numpy(labels), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    for name, idx in (("train", split.train_idx.numpy()), ("test", split.val_idx.numpy())):
        writer.put(f"{name}_images", images[idx])
        writer.put(f"{name}_labels", labels[idx])
    return _make_info("digits", tuple("0123456789"), images[split.train_idx.numpy()])


for _name in ("mnist", "fashionmnist", "svhn"):
    DATASETS.add(_name, partial(_locate_torchvision, _TORCHVISION[_name]))
DATASETS.add("cifar10", _cifar10)
DATASETS.add("cifar100", partial(_locate_torchvision, _TORCHVISION["cifar100"]))
DATASETS.add("tinyimagenet", _tinyimagenet)
DATASETS.add("imagenet", _imagenet)
DATASETS.add("folder", _folder)
DATASETS.add("digits", _digits)


# What each dataset holds, for listings that must not decode anything: (channels, image size, classes)
# as load_dataset returns them ("folder" follows its images, so it has none)
SHAPES: dict[str, tuple[int, int, int] | None] = {
    "mnist": (1, 28, 10),
    "fashionmnist": (1, 28, 10),
    "svhn": (3, 32, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "tinyimagenet": (3, IMAGENET_SIZE, 200),
    "imagenet": (3, IMAGENET_SIZE, 1000),
    "folder": None,
    "digits": (1, DIGITS_SIZE, 10),
}


@dataclass(frozen=True)
class CatalogEntry:
    """One registered dataset as ``proxynas datasets`` lists it."""

    name: str
    shape: tuple[int, int, int] | None  # (channels, image size, classes); None: read from the data
    present: bool  # its locator finds the data (nothing is decoded)
    where: str  # where it was found, or why not and how to provide it


def catalog(data_path: str | Path | None = None) -> list[CatalogEntry]:
    """Every registered dataset, with where its data is found (or what is missing): file checks only."""
    path = None if data_path is None else Path(data_path).expanduser().resolve()
    entries = []
    for name in DATASETS.names():
        try:
            where, present = DATASETS.get(name)(path, False).description, True
        except DatasetError as e:
            where, present = str(e), False
        entries.append(CatalogEntry(name, SHAPES.get(name), present, where))
    return entries


def load_dataset(
    name: str,
    data_path: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = False,
) -> Dataset:
    """Load a registered dataset as uint8 train/test tensors, decoding only on a cache miss.

    Args:
        name: a ``DATASETS`` name (case-insensitive), e.g. "cifar10", "folder", "digits".
        data_path: where the data is; torchvision datasets default to ``default_data_root()``.
        cache_dir: where decoded arrays are cached; default ``$PROXYNAS_CACHE`` or ``~/.cache/proxynas``.
        download: let torchvision download missing files (needs the network).
    """
    name = name.lower()
    locate = DATASETS.get(name)
    path = None if data_path is None else Path(data_path).expanduser().resolve()
    source = locate(path, download)
    key = cache_key(name, source.stamps, source.params)
    folder = cache_folder(Path(cache_dir) if cache_dir is not None else default_cache_dir(), key)
    cached = read_cache(folder, key)
    if cached is None:
        logger.info("decoding %s into the cache %s", source.description, folder)
        try:
            with CacheWriter(folder) as writer:
                writer.commit(key, source.build(writer), source.description)
        except OSError as e:  # decoding errors are DatasetErrors already; this is the cache's disk
            fix = "free disk space or choose another cache dir"
            raise DatasetError(f"cannot write the dataset cache {folder} ({_one_line(e)}); {fix}") from None
        cached = read_cache(folder, key)
        if cached is None:
            fix = "check the disk and that nothing else writes there"
            raise DatasetError(f"the dataset cache just written to {folder} fails verification; {fix}")
    info, description, arrays, fingerprint = cached

    def split(s: str) -> Split:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        return Split(torch.from_numpy(images), torch.from_numpy(labels), info.num_classes)

    return Dataset(info, split("train"), split("test"), description, fingerprint)
