"""Which configurations a baseline study trains (docs/protocol.md §5).

A baseline (a study kind with a ``budget``, ``kinds.KINDS``: whole-dataset or early-stopping training) is a search
whose source is the real training split: same configuration ids, same user attributes,
same storage, so the dashboard and the report treat every study alike. It need not
cover the whole space: the paper's metric needs whole-dataset results only for the
configurations some method puts in its top 5%, so ``--configs top:<study>:0.05``
validates a proxy for a fraction of the full cost.
"""

from __future__ import annotations

from pathlib import Path

from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.results import parse_top, study_top


def select_configs(spec: str | None, storage: str) -> tuple[str, ...] | None:
    """Which configurations a baseline trains.

    ``all`` or None (None: the whole space); ``top:<study>:<fraction or k>`` (the best of a
    study by validation accuracy, e.g. ``top:dm:0.05``); ``@file`` (one id a line); or
    comma-separated ids.
    """
    if spec is None or spec == "all":
        return None
    if spec.startswith("top:"):
        try:
            _, study_name, amount = spec.split(":")
            top = parse_top(amount)
        except (ValueError, UsageError):
            raise UsageError(f"--configs {spec!r}: expected top:<study>:<fraction or k>, e.g. top:dm:0.05") from None
        try:
            ids = study_top(storage, study_name, top)  # counted against the study's space, finished or not
        except StudyError as e:
            raise StudyError(f"--configs {spec!r}: {e}") from None
        if not ids:
            raise StudyError(f"--configs {spec!r}: study {study_name!r} has no complete trials yet")
        return tuple(ids)
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise UsageError(f"--configs {spec!r}: no such file; give one configuration id per line")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids:
        raise UsageError(f"--configs {spec!r} names no configuration")
    return tuple(dict.fromkeys(ids))
