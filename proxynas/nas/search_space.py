"""Search spaces: declarative TOML files that list the ConvNets a NAS study chooses from.

References:
- Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023), Table 5,
  and docs/protocol.md §5: the 720-ConvNet space, bundled as ``search_spaces/convnet720.toml``.
- Optuna's define-by-run API: :meth:`SearchSpace.suggest` asks ``suggest_categorical``
  once per axis that varies, so the random, TPE, grid and brute-force samplers all
  share one space.

A space file (TOML, read with the standard library's ``tomllib``)::

    name = "convnet720"        # optional; defaults to the file name without .toml
    description = "..."        # optional
    [axes]                     # NetConfig field = [values], in enumeration order
    depth = [1, 2, 3, 4]
    norm = ["none", "batchnorm"]

Each axis is a field of :class:`proxynas.core.networks.NetConfig` (depth, width, act, norm,
pool); an axis left out keeps NetConfig's default. The configurations are the Cartesian
product of the axes in file order (the last axis varies fastest), so a file fixes its
enumeration order and every configuration's id (``d2-w64-relu-batchnorm-max``), which
``networks.build`` accepts. An invalid file raises :class:`SearchSpaceError` with one
line naming the file and the key (or TOML's line and column for a syntax error).

Bundled spaces ship inside the package as ``proxynas.search_spaces``: pyproject.toml
maps the top-level ``search_spaces/`` folder there, so they load the same way from a
source checkout and from a plain ``pip install``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from proxynas.core.networks import ConvNet, NetConfig, count_flops, count_params
from proxynas.exceptions import SearchSpaceError, UsageError

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

__all__ = ["DEFAULT_SPACE", "SearchSpace", "bundled_spaces", "describe_space", "load_space"]

DEFAULT_SPACE = "convnet720"
_BUNDLED_PACKAGE = "proxynas.search_spaces"
_AXES = tuple(f.name for f in fields(NetConfig))  # the axes a space may list
_FILE_KEYS = ("name", "description", "axes")

Value = int | str  # what NetConfig fields hold; both are JSON-able and Optuna categorical choices


@dataclass(frozen=True)
class SearchSpace:
    """A Cartesian product of NetConfig values; validated when built (see the module docstring)."""

    name: str
    axes: Mapping[str, Sequence[Value]] = field(hash=False)  # axis -> values; stored as dict of tuples
    source: str  # file path, "bundled:<name>", or what built it; prefixes every error message
    description: str = ""

    def __post_init__(self) -> None:
        src = self.source
        if not isinstance(self.name, str) or not self.name:
            raise SearchSpaceError(f"{src}: name: must be a non-empty string, got {self.name!r}")
        if not isinstance(self.description, str):
            raise SearchSpaceError(f"{src}: description: must be a string, got {self.description!r}")
        if not self.axes:
            raise SearchSpaceError(f"{src}: axes: no axes; list at least one of: {', '.join(_AXES)}")
        axes = {axis: _checked_values(f"{src}: axes.{axis}", axis, vals) for axis, vals in self.axes.items()}
        object.__setattr__(self, "axes", axes)  # a copy of tuples: the caller's lists may change
        self.configs()  # values valid one by one can clash: groupnorm needs a width divisible by 4

    def _config(self, settings: Mapping[str, Any]) -> NetConfig:  # NetConfig checks each value's type itself
        try:
            return NetConfig(**settings)
        except UsageError as err:
            combination = ", ".join(f"{axis}={value!r}" for axis, value in settings.items())
            raise SearchSpaceError(f"{self.source}: axes: {combination} is not a valid combination ({err})") from None

    def configs(self) -> list[NetConfig]:
        """Every configuration, in the stable order of the product of the axes."""
        return [self._config(dict(zip(self.axes, values, strict=True))) for values in product(*self.axes.values())]

    def ids(self) -> list[str]:
        return [cfg.id for cfg in self.configs()]

    def __len__(self) -> int:
        return math.prod(len(values) for values in self.axes.values())

    def restrict(self, spec: str) -> SearchSpace:
        """The sub-space that ``"depth=1,2;norm=instancenorm,batchnorm"`` keeps; other axes stay whole.

        Kept values stay in this space's order, so the sub-space enumerates its
        configurations in the same relative order as the full one.
        """
        where = f"{self.source}: restriction {spec!r}"
        keep: dict[str, set[Value]] = {}
        for part in spec.split(";"):
            axis, equals, listed = (s.strip() for s in part.partition("="))
            if not equals or not axis:
                raise SearchSpaceError(f"{where}: expected axis=value,...;axis=... as in depth=1,2;pool=max")
            if axis not in self.axes:
                raise SearchSpaceError(f"{where}: unknown axis {axis!r}; the axes are: {', '.join(self.axes)}")
            if axis in keep:
                raise SearchSpaceError(f"{where}: axis {axis!r} is given twice")
            by_text = {str(value): value for value in self.axes[axis]}  # "2" -> 2
            texts = [text.strip() for text in listed.split(",")]
            unknown = [text for text in texts if text not in by_text]
            if unknown:
                choices = ", ".join(by_text)
                raise SearchSpaceError(f"{where}: {axis}={unknown[0]!r} is not in the space; choose from: {choices}")
            keep[axis] = {by_text[text] for text in texts}
        axes = {a: tuple(v for v in vals if v in keep.get(a, vals)) for a, vals in self.axes.items()}
        label = ";".join(f"{axis}={','.join(map(str, axes[axis]))}" for axis in axes if axis in keep)
        return SearchSpace(f"{self.name}[{label}]", axes, self.source, self.description)

    def varying(self) -> tuple[str, ...]:
        """The axes with more than one value, in file order: the only ones a trial records as params."""
        return tuple(axis for axis, values in self.axes.items() if len(values) > 1)

    def covering_sample(self, n: int) -> list[str]:
        """``n`` configuration ids (all of them when ``n`` is 0 or covers the space) in which every value
        of every axis appears, once ``n`` reaches the longest axis.

        Configuration i takes value ``(i + j * (i // k)) % k`` of the j-th axis (of k values):
        each axis steps through its values in turn, and the j-th one shifts j places each
        round, so that axes of one length do not stay in lockstep (depth 1 with width 32).
        """
        if n == 0 or n >= len(self):
            return self.ids()
        ids: list[str] = []
        for i in range(n):
            settings = {
                axis: vals[(i + j * (i // len(vals))) % len(vals)] for j, (axis, vals) in enumerate(self.axes.items())
            }
            ids.append(self._config(settings).id)
        return list(dict.fromkeys(ids))  # a small space can repeat a combination: list it once

    def suggest(self, trial: BaseTrial) -> NetConfig:
        """The configuration an Optuna trial picks: one ``suggest_categorical`` per varying axis, named as it.

        An axis with one value is not asked: as a param it would only show up with
        importance 0 in optuna-dashboard. The trial's ``config_id`` user attribute
        spells out every axis.
        """
        choices = {
            axis: values[0] if len(values) == 1 else trial.suggest_categorical(axis, values)
            for axis, values in self.axes.items()
        }
        return self._config(choices)

    def check_buildable(self, channels: int, image_size: int) -> None:
        """Raise SearchSpaceError naming the first configuration that cannot run on these inputs.

        E.g. depth 6 with pooling shrinks a 32x32 map to nothing. Every network is built
        on the meta device, shapes only (see BENCHMARKS.md, 'Search throughput').
        """
        for cfg in self.configs():
            meta_net(self.source, cfg, channels, 2, image_size)  # any class count builds the same

    def to_dict(self) -> dict[str, object]:
        """A JSON-able record of the space, e.g. for a study's user attributes."""
        axes = {axis: list(values) for axis, values in self.axes.items()}
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "size": len(self),
            "axes": axes,
        }


def _checked_values(where: str, axis: str, values: object) -> tuple[Value, ...]:
    """`values` as a tuple, or SearchSpaceError if the axis or any value cannot be used on its own."""
    if axis not in _AXES:
        raise SearchSpaceError(f"{where}: unknown axis; allowed axes: {', '.join(_AXES)}")
    if not isinstance(values, (list, tuple)):
        raise SearchSpaceError(f"{where}: must be a list of values, got {values!r}")
    if not values:
        raise SearchSpaceError(f"{where}: empty list; give at least one value")
    for i, value in enumerate(values):
        if not isinstance(value, (int, str)):
            raise SearchSpaceError(f"{where}: {value!r} is not valid (values are strings or integers)")
        setting: dict[str, Any] = {axis: value}  # NetConfig checks the value's type itself
        try:
            NetConfig(**setting)
        except UsageError as err:
            raise SearchSpaceError(f"{where}: {value!r} is not valid ({err})") from None
        if value in values[:i]:
            raise SearchSpaceError(f"{where}: {value!r} is listed twice")
    return tuple(values)


def meta_net(source: str, cfg: NetConfig, channels: int, num_classes: int, image_size: int) -> ConvNet:
    """The network ``networks.build(cfg, ...)`` makes, on the meta device: real shapes, no weights."""
    try:
        with torch.device("meta"):
            return ConvNet(cfg, channels, num_classes, image_size)
    except UsageError as err:
        raise SearchSpaceError(f"{source}: {err}") from None


def bundled_spaces() -> list[str]:
    """Names of the spaces shipped with proxynas (``load_space`` accepts them)."""
    files = resources.files(_BUNDLED_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_space(spec: str | Path | None = None) -> SearchSpace:
    """Load a bundled space by name (default ``convnet720``) or a space file by path.

    A string that names a bundled space loads it, even if a file of that name exists.
    """
    spec = DEFAULT_SPACE if spec is None else spec
    if isinstance(spec, str) and spec in bundled_spaces():
        text = (resources.files(_BUNDLED_PACKAGE) / f"{spec}.toml").read_bytes()
        return _parse(text, f"bundled:{spec}", default_name=spec)
    path = Path(spec)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise SearchSpaceError(
            f"search space {str(spec)!r} not found: no such file, and the bundled spaces are "
            f"{', '.join(bundled_spaces())}"
        ) from None
    except OSError as err:
        raise SearchSpaceError(f"{path}: cannot read the search space file ({err.strerror})") from None
    return _parse(text, str(path), default_name=path.stem)


def _parse(text: bytes, source: str, default_name: str) -> SearchSpace:
    try:
        data = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SearchSpaceError(f"{source}: not valid TOML: {err}") from None  # names the line and column
    unknown = [key for key in data if key not in _FILE_KEYS]
    if unknown:
        allowed = ", ".join(_FILE_KEYS)
        raise SearchSpaceError(f"{source}: {unknown[0]}: unknown key; the keys are: {allowed}")
    if not isinstance(data.get("axes"), dict):
        raise SearchSpaceError(
            f"{source}: axes: missing or not a table; add an [axes] table of NetConfig fields "
            f"({', '.join(_AXES)}) = [values]"
        )
    return SearchSpace(data.get("name", default_name), data["axes"], source, data.get("description", ""))


def describe_space(
    space: SearchSpace, channels: int, num_classes: int, image_size: int, ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per configuration (all, or those in `ids`): id, the space's axes, params, flops.

    Params and FLOPs are those of ``networks.describe`` (FLOPs per image, at this input
    size), counted on the meta device (shapes only, no compute).
    """
    by_id = {cfg.id: cfg for cfg in space.configs()}
    missing = [i for i in ids or () if i not in by_id]
    if missing:
        raise SearchSpaceError(f"{space.source}: {missing[0]!r} is not in the space {space.name!r}")
    rows = []
    for net_id in by_id if ids is None else ids:
        cfg = by_id[net_id]
        model = meta_net(space.source, cfg, channels, num_classes, image_size)
        settings = {axis: getattr(cfg, axis) for axis in space.axes}
        counts = {"params": count_params(model), "flops": count_flops(model, channels, image_size)}
        rows.append({"id": net_id, **settings, **counts})
    return pd.DataFrame(rows, columns=["id", *space.axes, "params", "flops"])
