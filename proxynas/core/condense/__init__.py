"""Condensing a dataset into a proxy set: ``condense(cfg, out)`` runs any registered method.

Methods (one module each, registered in ``CONDENSERS``): ``dm`` (Distribution
Matching, the default), ``m3d`` (DM's loop matching a kernel MMD), ``dsa`` (gradient
matching with Siamese augmentation), and the ``random``, ``herding`` and ``kcenter``
coresets; ``factor`` learns dm or m3d images at a lower resolution, decoded by
upsampling (``_factor.py``). ``condense_distributed`` runs one rank of a condensation over a
torch.distributed group (``torchrun -m proxynas condense``; ``distributed.py``), and
``condense_sharded`` launches such a group on this machine (``--workers``). The proxy set they
write, ``SyntheticSet``, and its file format are ``proxynas.core.proxy_set``'s (re-exported here).

A new method is one function in one module, registered with its traits by one decorator,
``@register_method(name, ...)`` (``Condenser`` lists them); an iterative one runs its
iterations in ``ResumableLoop``, which checkpoints, resumes and reports for it. Nothing
else in proxynas names a method: ``proxynas condense --method name`` runs it.
"""

from proxynas.core.condense import _coreset, _dm, _dsa, _kcenter, _m3d  # noqa: F401  (importing a method's module registers it)
from proxynas.core.condense._base import (
    CONDENSERS,
    TUNE_CHOICES,
    Checkpoint,
    CondenseConfig,
    Condenser,
    MethodResult,
    Problem,
    Reporter,
    describe_methods,
    register_method,
)
from proxynas.core.condense._dm import dm_loss, dm_loss_per_class
from proxynas.core.condense._loop import ResumableLoop
from proxynas.core.condense._m3d import KERNELS as MMD_KERNELS
from proxynas.core.condense._m3d import mmd_loss
from proxynas.core.condense._shards import condense_sharded
from proxynas.core.condense.distributed import Ranks, condense_distributed
from proxynas.core.condense.run import checkpoint_path, condense, merge, parse_classes, save_grid
from proxynas.core.proxy_set import SyntheticSet, config_path

__all__ = [
    "CONDENSERS",
    "MMD_KERNELS",
    "TUNE_CHOICES",
    "Checkpoint",
    "CondenseConfig",
    "Condenser",
    "MethodResult",
    "Problem",
    "Ranks",
    "Reporter",
    "ResumableLoop",
    "SyntheticSet",
    "describe_methods",
    "register_method",
    "condense",
    "condense_distributed",
    "condense_sharded",
    "config_path",
    "merge",
    "save_grid",
    "checkpoint_path",
    "dm_loss",
    "dm_loss_per_class",
    "mmd_loss",
    "parse_classes",
]
