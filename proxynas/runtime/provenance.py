"""What every artifact records about the software that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import optuna
import torch
import torchvision

from proxynas.version import __version__


def versions() -> dict[str, str]:
    found = {
        "proxynas": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }
    if (revision := source_revision()) is not None:
        found["proxynas_revision"] = revision
    return found


@functools.cache
def source_revision() -> str | None:
    """The git commit proxynas runs from, '-dirty' where its files differ from it; None outside a git checkout.

    Between releases the version number stays the same, so a study's history needs the commit to
    tell two builds apart.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed wheel: the version says it all
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or not a repository git can read
        return None
    return done.stdout.strip() or None
