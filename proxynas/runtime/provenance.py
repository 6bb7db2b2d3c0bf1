"""What every artifact records about the software that produced it."""

from __future__ import annotations

import platform

import optuna
import torch
import torchvision

from proxynas.version import __version__


def versions() -> dict[str, str]:
    return {
        "proxynas": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }
