"""proxynas: neural architecture search on condensed proxy sets.

Condense a dataset with Distribution Matching, train candidate networks on the tiny
proxy set, and measure with rank correlations how far the proxy ranking can be trusted.
"""

__version__ = "0.1.0"
