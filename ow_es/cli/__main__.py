"""Run the CLI with ``python -m ow_es.cli``."""

from ow_es.cli.main import main

main()
