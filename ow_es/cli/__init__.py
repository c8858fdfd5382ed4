"""The ``ow-es`` command line: one module per command group, each a thin layer over the client."""

from ow_es.cli.main import main

__all__ = ["main"]
