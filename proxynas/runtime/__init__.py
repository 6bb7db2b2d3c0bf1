"""The runtime layer: what every other layer stands on.

Registries, seeding, atomic file output, provenance, devices and the allocator,
progress display and worker processes. Nothing here knows about datasets, networks or studies.
"""
