"""The resumable loop every iterative method runs (DM, M3D, DSA, and any new one).

A method builds the tensor it learns and its SGD optimiser, then::

    loop = ResumableLoop(syn, opt, iterations, ckpt)  # resumes from the checkpoint, if there is one
    ...                                               # set-up that may read the restored images
    loop.run(step, report, every=10)                  # step(it) runs iteration it, returns its loss
    return loop.result(images, {"iterations": iterations, ...})

The loop owns what is the same for all of them: the loss curve (kept on the device, so recording
a loss never syncs), progress reports, a checkpoint whenever ``Checkpoint.due``, one on Ctrl-C
or SIGTERM (the iteration cut short is redone on resume), and the seconds spent over every
session of the run. A step must draw everything from generators seeded by ``it``, as the
methods do, so that a resumed run computes what an uninterrupted one computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from proxynas.core.condense._base import Checkpoint, MethodResult, Reporter


class ResumableLoop:
    """Iterations ``start`` .. ``iterations`` of one method over ``syn``, where ``start`` is
    where the checkpoint stopped (0 without one); construction restores ``syn``, the
    optimiser's momentum and the loss curve so far."""

    def __init__(self, syn: torch.Tensor, opt: torch.optim.SGD, iterations: int, ckpt: Checkpoint) -> None:
        self.syn, self.opt, self.ckpt = syn, opt, ckpt
        self.losses = torch.zeros(iterations, device=syn.device)  # on the device: recording a loss never syncs
        self.start, self.elapsed = ckpt.restore(syn, opt, self.losses)

    @property
    def iterations(self) -> int:
        return len(self.losses)

    def run(self, step: Callable[[int], torch.Tensor], report: Reporter | None, every: int = 1) -> None:
        """Run ``step(it)`` for the iterations left; it does the whole iteration (optimiser steps
        included) and returns its loss, a 0-dim tensor. Reports the start (loss None), then every
        ``every`` iterations and the first and last ones (each report is a host sync)."""
        iterations, start = self.iterations, self.start
        t0, done = time.perf_counter(), start

        def save(done: int) -> None:
            self.ckpt.save_state(done, self.syn, self.opt, self.losses, self.elapsed + time.perf_counter() - t0)

        if report is not None:
            report(start, iterations, None)  # the steps start now: a progress display times them from here
        try:
            for it in range(start, iterations):
                self.losses[it] = step(it)
                done = it + 1
                if report is not None and (done % every == 0 or done in (start + 1, iterations)):
                    report(done, iterations, float(self.losses[it]))
                if self.ckpt.due(done, iterations):
                    save(done)
        except KeyboardInterrupt:
            if self.ckpt.saves_on_interrupt:
                save(done)  # an iteration cut short is redone on resume
            raise
        self.elapsed += time.perf_counter() - t0

    def result(self, images: torch.Tensor, extra: dict[str, Any]) -> MethodResult:
        """The method's result: ``images`` and its ``extra`` metadata, then the loss curve and the
        seconds the iterations took over every session of the run."""
        return MethodResult(images, {**extra, "loss_curve": self.losses.tolist(), "condense_seconds": self.elapsed})
