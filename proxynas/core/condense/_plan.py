"""How a DM step runs on this device, chosen by timing it.

The DM loss is a sum over classes, and only the synthetic images are learned, so a step
has two batch sizes of its own: the classes whose synthetic images go through the
network together (their graph kept for the backward), and the real images per forward
(no graph; with InstanceNorm each image is normalised alone, so any split gives the same
features). Layout (channels_last), in-place activations and compilation (``torch.compile``
fuses norm, activation and pooling) are the other knobs; every plan computes the same
loss. Which is fastest depends on the machine: fewer classes per forward keep the real
activations nearer the cores (all ten classes' 2,600 images make 1.2 GB a layer), but send
the synthetic images through in smaller batches, slower per image; once the step is
compiled, the convolutions dominate (see BENCHMARKS.md, 'DM step against the reference').
Two machines have ranked the plans in opposite orders. So the plan is measured, not
guessed: a few real steps per candidate at start-up, the fastest kept, and the answer
cached per device, network, shapes and precision in ``$PROXYNAS_CACHE/dm_plans.json`` (a
second run on the same machine pays nothing) and recorded in the proxy set.

A short run (``QUICK_MIN_ITERATIONS`` to ``TUNE_MIN_ITERATIONS``) cannot repay the whole
search, but the memory rule alone can cost it several times over (one forward of every class's
real images, eager; see BENCHMARKS.md, 'DM step against the reference'): it gets a quick race
of the rule against the rule with layout and compilation on, one timed step each (``quick``),
cached apart from the searched plans.

The search is greedy, one knob at a time: real images per forward (with every class's
synthetic images together, up to what the memory budget allows), then classes per
forward, then channels_last, then in-place activations, then compilation; the plans of
each round are timed interleaved, step by step, and the fastest step counts, so a load
spike on a shared machine does not pick the plan. With batch statistics (BatchNorm) the
real images of all classes form one batch and the synthetic ones another, so only the
last three knobs are searched. A compiler may be missing (``torch.compile`` needs one
on the CPU): that candidate then fails, is recorded as unavailable, and the step runs
eagerly.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxynas.core.data import default_cache_dir
from proxynas.core.networks import Net
from proxynas.core.stacked import quiet_compile_imports
from proxynas.runtime.outputs import write_json

log = logging.getLogger(__name__)

CACHE_FILE = "dm_plans.json"
TUNE_MIN_ITERATIONS = 500  # below this, the whole search (a minute on a CPU) costs more than it can save
QUICK_MIN_ITERATIONS = 50  # below this, even the quick race (a compilation, 4 steps) is not repaid
TIMED_ROUNDS = 3  # timed steps per plan, after one untimed warm-up step (the fastest counts)
_INPLACE = (nn.ReLU, nn.LeakyReLU)


@dataclass(frozen=True)
class StepPlan:
    classes_per_forward: int  # synthetic images of this many classes per forward and backward
    real_per_forward: int | None = None  # real images per (graph-free) forward; None: all of those classes'
    channels_last: bool = False
    inplace: bool = False
    compiled: bool = False

    def chunks(self, num_classes: int) -> list[slice]:
        size = self.classes_per_forward
        return [slice(s, min(s + size, num_classes)) for s in range(0, num_classes, size)]

    def label(self) -> str:
        flags = [
            f
            for f, on in (("channels_last", self.channels_last), ("inplace", self.inplace), ("compiled", self.compiled))
            if on
        ]
        real = "" if self.real_per_forward is None else f", {self.real_per_forward} real/forward"
        return f"{self.classes_per_forward} classes/forward{real}" + "".join(f", {f}" for f in flags)


class Embedder:
    """The embedding network a plan runs: one persistent copy that each iteration's fresh
    weights are copied into, so a compiled graph is built once for the whole run."""

    def __init__(self, probe: Net, plan: StepPlan) -> None:
        self.plan = plan
        self.net = copy.deepcopy(probe).requires_grad_(False)
        if plan.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if plan.inplace:
            for m in self.net.modules():
                if isinstance(m, _INPLACE):
                    m.inplace = True  # their backward needs only the output, which they write
        if plan.compiled:
            quiet_compile_imports()
        self._embed = torch.compile(self.net.embed, dynamic=False) if plan.compiled else self.net.embed

    @torch.no_grad()
    def load(self, net: nn.Module) -> Embedder:
        """Take ``net``'s weights and buffers (an architecture-identical network)."""
        mine = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            mine[name].copy_(t)
        self.net.train(net.training)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._embed(x)


def sizes_to_try(limit: int) -> list[int]:
    """Classes per forward worth timing: powers of two below ``limit``, and ``limit`` itself."""
    return sorted({2**k for k in range(int(math.log2(limit)) + 1) if 2**k < limit} | {limit})


def real_sizes_to_try(batch_real: int, limit: int) -> list[int | None]:
    """Real images per forward worth timing: a quarter of a class's batch up to four classes'
    (fewer than ``limit`` classes hold), then all of them (None)."""
    sizes = {max(1, batch_real * m // 4) for m in (1, 2, 4, 8, 16)}
    return [*sorted(s for s in sizes if s < batch_real * limit), None]


def search(
    time_plans: Callable[[list[StepPlan]], dict[StepPlan, float]], limit: int, fixed_size: bool, batch_real: int
) -> tuple[StepPlan, dict[str, Any]]:
    """The greedy search: a race of real images per forward (all classes' synthetic images
    together), then of classes per forward, then the best so far against itself with one
    more knob turned on, knob by knob. ``time_plans`` times a list of plans together
    (seconds per step; ``inf`` where a plan fails). ``fixed_size``: the embedding has batch
    statistics, so all classes go in one forward, real and synthetic apart.
    """
    timings: dict[str, float] = {}
    race = functools.partial(_race, time_plans, timings)
    best = StepPlan(limit)
    if not fixed_size:
        best = race([StepPlan(limit, r) for r in real_sizes_to_try(batch_real, limit)])
        best = race([dataclasses.replace(best, classes_per_forward=s) for s in sizes_to_try(limit)[::-1]])
    for knob in ("channels_last", "inplace", "compiled"):
        if knob == "inplace" and best.compiled:
            continue  # a compiled graph fuses activations anyway
        best = race([best, dataclasses.replace(best, **{knob: True})])
    return best, {"seconds_per_step": timings}


def quick(time_plans: Callable[[list[StepPlan]], dict[StepPlan, float]], limit: int) -> tuple[StepPlan, dict[str, Any]]:
    """A short run's race: the memory rule against itself in channels_last and compiled
    (in-place activations add nothing to a compiled graph); the rule where compiling fails."""
    timings: dict[str, float] = {}
    rule = StepPlan(limit)
    return _race(time_plans, timings, [rule, dataclasses.replace(rule, channels_last=True, compiled=True)]), {
        "seconds_per_step": timings
    }


def _race(
    time_plans: Callable[[list[StepPlan]], dict[StepPlan, float]], timings: dict[str, float], plans: list[StepPlan]
) -> StepPlan:
    times = time_plans(plans)
    timings.update({p.label(): t for p, t in times.items()})
    return min(plans, key=times.__getitem__)  # a tie keeps the first: the plan already chosen


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def cache_key(device: torch.device, **shape: Any) -> str:
    # the plan's fields name the search that found it: a plan from before a knob existed is searched again
    fields = {
        "device": device_name(device),
        "torch": torch.__version__,
        "plan_fields": [f.name for f in dataclasses.fields(StepPlan)],
        **shape,
    }
    return json.dumps(fields, sort_keys=True)


def cached(key: str, path: Path | None = None) -> StepPlan | None:
    path = path or default_cache_dir() / CACHE_FILE
    try:
        entry = json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None
    return StepPlan(**entry["plan"]) if entry else None


def remember(key: str, plan: StepPlan, record: dict[str, Any], path: Path | None = None) -> None:
    """Add the plan to the cache file (written atomically; a lost race only costs a re-tune)."""
    path = path or default_cache_dir() / CACHE_FILE
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[key] = {"plan": dataclasses.asdict(plan), **record}
    try:
        write_json(path, entries)
    except OSError as e:  # a read-only cache only means tuning again next time
        log.warning("could not cache the DM step plan in %s (%s)", path, e)


def measure(
    step: Callable[[StepPlan], None],
    sync: Callable[[], None],
    rounds: int = TIMED_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> Callable[[list[StepPlan]], dict[StepPlan, float]]:
    """A ``time_plans`` for ``search``: one untimed step per plan not yet run (compilation,
    allocator), then ``rounds`` rounds taking one step of each plan in turn, so that a
    shared machine's changing load hits them alike; each plan's fastest step counts. A plan
    that fails to run (no compiler, say) costs ``inf``."""
    warm: set[StepPlan] = set()
    failed: set[StepPlan] = set()

    def run(plan: StepPlan) -> float:
        sync()
        t = clock()
        step(plan)
        sync()
        return clock() - t

    def time_plans(plans: list[StepPlan]) -> dict[StepPlan, float]:
        for plan in plans:
            if plan in warm or plan in failed:
                continue
            try:
                run(plan)
                warm.add(plan)
            except Exception as e:  # noqa: BLE001 - compilers fail in many ways; any failure rules the plan out
                log.warning("DM step plan %r cannot run here (%s): skipped", plan.label(), str(e).splitlines()[0])
                failed.add(plan)
        times = {plan: math.inf for plan in plans}
        live = [p for p in plans if p in warm]
        for r in range(rounds):
            for plan in live[r % max(1, len(live)) :] + live[: r % max(1, len(live))]:
                times[plan] = min(times[plan], run(plan))
        for plan in live:
            log.info("DM step plan %s: %.3f s", plan.label(), times[plan])
        return times

    return time_plans
