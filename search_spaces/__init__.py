"""Bundled search-space files; installed as ``proxynas.search_spaces`` (see pyproject.toml)."""
