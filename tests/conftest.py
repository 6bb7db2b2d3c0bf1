"""Shared fixtures: small in-memory datasets that tests build themselves."""

from __future__ import annotations

import signal

import pytest
import torch

from proxynas.core.data import Dataset, DatasetInfo, Split

TINY_MODEL = "d2-w8-relu-instancenorm-avg"  # a ConvNet small enough for many iterations on CPU


def make_dataset(
    num_classes: int = 3,
    per_class: int = 20,
    size: int = 16,
    channels: int = 3,
    test_per_class: int = 10,
    seed: int = 0,
) -> Dataset:
    """Classes that differ in mean brightness, so training on them can learn something."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        labels = torch.arange(num_classes).repeat_interleave(n)
        base = (labels.float() + 0.5) / num_classes * 255
        noise = torch.randn(len(labels), channels, size, size, generator=g) * 30
        images = (base.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels, num_classes)

    info = DatasetInfo(
        name="tiny",
        channels=channels,
        image_size=size,
        num_classes=num_classes,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        dsa_strategy="color_crop_cutout_flip_scale_rotate",
    )
    return Dataset(info, split(per_class), split(test_per_class), source="tests.conftest.make_dataset")


@pytest.fixture
def tiny() -> Dataset:
    return make_dataset()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded datasets go to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def ctrl_c_default() -> None:
    """Popen's preexec_fn for a child that a test Ctrl-C's: SIGINT back to its default.

    A job started in the background of a non-interactive shell (CI under nohup, ``cmd &``)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the
    child would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
