"""The proxynas release, in a module of its own so that every layer can record it without importing the package."""

__version__ = "0.2.0"  # 0.1.0 wrote studies of schema 0; 0.2.0 writes schema 2 (nas/schema.py)
