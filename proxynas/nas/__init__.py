"""The NAS layer: search spaces, study storage and its queue, the storage server, training
sources, objectives, the search itself and its baselines. Stands on ``core`` and ``runtime``."""
