"""The whole pipeline on the embedded digits dataset, in minutes on a CPU (BENCHMARKS.md, Quickstart).

condense (DM and random proxy sets, 10 images per class, the validation split held
out) -> search a slice of the 720 space on each proxy -> early-stop and whole-dataset
baselines on the same slice -> report. Every stage writes under one folder and is
resumable: re-running after an interruption skips what is finished and continues
what is not (proxy sets are resumed from their checkpoints, studies from their
queues).

The budget is cut down from the paper's (documented in ``QuickstartPlan``) so the
run finishes in minutes; the recipe at paper scale is in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxynas.runtime.options import option

if TYPE_CHECKING:  # run_quickstart imports the library when it runs: the plan's flags build fast for --help
    from proxynas.analysis.report import Report


@dataclass(frozen=True)
class QuickstartPlan:
    out: Path = field(
        default=Path("results/quickstart"),
        metadata=option(
            "--out-dir", old=["--out"], help="folder for the proxy sets, the studies (studies.db) and the report"
        ),
    )
    dataset: str = "digits"
    ipc: int = 10
    dm_iterations: int = 100  # the paper: 20,000
    batch_real: int = 32  # the paper: 256
    # 12 configurations: two depths, two activations, three normalisations (a slice of the 720)
    restrict: str = "depth=1,2;width=32;act=relu,sigmoid;norm=none,batchnorm,instancenorm;pool=avg"
    proxy_epochs: int = 40  # the paper: 200 (1 step an epoch here: 100 images, batch 250)
    whole_epochs: int = 5  # the paper: 100
    repeats: int = 1  # trainings per candidate; the paper: 5
    top: float = 0.5  # the paper: 0.05 of 720; half of 12 keeps the correlation meaningful
    seed: int = 0
    device: str = field(
        default="auto", metadata=option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    )

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.out / 'studies.db'}"


Stage = Callable[[str], None]  # told the name of each stage as it starts


def run_quickstart(
    plan: QuickstartPlan = QuickstartPlan(),
    *,
    on_stage: Stage | None = None,
    condense_progress: Callable | None = None,
    search_progress: Callable[[dict[str, Any]], None] | None = None,
    command: str | None = None,
) -> tuple[Report, dict[str, Path]]:
    """Run (or continue) every stage; returns the report and the files it wrote.

    ``command``: the command line that asked for it, recorded in the proxy sets and the report's
    config.json, as condense and report record theirs.
    """
    from proxynas.analysis.dashboard import attach_report
    from proxynas.analysis.report import build_report, write_report
    from proxynas.core.condense import CondenseConfig, SyntheticSet, condense
    from proxynas.core.train import TrainConfig
    from proxynas.nas.kinds import EARLY_STOP, WHOLE, baseline_budget
    from proxynas.nas.search import SearchConfig, launch

    stage = on_stage or (lambda name: None)
    plan.out.mkdir(parents=True, exist_ok=True)
    proxies = {}
    for method in ("dm", "random"):
        stage(f"condense {method}")
        path = plan.out / f"{plan.dataset}-{method}-ipc{plan.ipc}.safetensors"
        condense(
            CondenseConfig(
                dataset=plan.dataset,
                method=method,
                ipc=plan.ipc,
                iterations=plan.dm_iterations,
                batch_real=plan.batch_real,
                seed=plan.seed,
                checkpoint_every=25,
            ),
            path,
            resume=True,
            device=plan.device,
            report=condense_progress,
            command=command,
        )
        proxies[method] = path

    # the studies record no command: the report suggests a study's with flags added (--configs, --steps),
    # and quickstart takes none of them
    base = SearchConfig(
        study="",
        proxy="",
        storage=plan.storage,
        restrict=plan.restrict,
        seed=plan.seed,
        device=plan.device,
        train=TrainConfig(epochs=plan.proxy_epochs, batch_size=250),
        repeats=plan.repeats,
    )
    for method, path in proxies.items():
        stage(f"search on the {method} proxy")
        launch(replace(base, study=method, proxy=str(path)), 1, search_progress)
    steps = base.train.total_steps(len(SyntheticSet.load(proxies["dm"]).labels))  # early stopping costs as much
    for kind, train in (
        (EARLY_STOP, replace(baseline_budget(EARLY_STOP), steps=steps)),
        (WHOLE, replace(baseline_budget(WHOLE), epochs=plan.whole_epochs)),
    ):
        stage(f"baseline {kind}")
        launch(
            replace(base, study=kind, proxy=None, baseline=kind, dataset=plan.dataset, train=train), 1, search_progress
        )

    stage("report")
    report = build_report(plan.storage, list(proxies), WHOLE, EARLY_STOP, top=plan.top, k=3)
    paths = write_report(report, plan.out / "report", command=command)
    attach_report(plan.storage, report, paths, plan.out / "report")  # the dashboard shows it beside the studies
    return report, paths
