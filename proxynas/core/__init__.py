"""The core layer: datasets, augmentation, networks, training, condensation methods and evaluation.

Stands on ``proxynas.runtime`` only; it knows nothing of studies or searches.
"""
