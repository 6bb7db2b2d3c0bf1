"""``python -m proxynas``: the command line without an installed entry point (a GPU box, say)."""

from proxynas.cli import main

raise SystemExit(main())
