"""The ``ow-es`` command line: a thin layer over the library, one client per command.

Every option reads an environment variable (shown in ``--help``); library errors print one
``error: ...`` line on stderr and exit 1, usage errors exit 2.
"""

from __future__ import annotations

import click

from ow_es import __version__
from ow_es.cli.common import Group
from ow_es.cli.dashboard import dashboard
from ow_es.cli.doctor import doctor
from ow_es.cli.limits import limits
from ow_es.cli.migrate import migrate
from ow_es.cli.project import worker_defaults
from ow_es.cli.reproject import reproject
from ow_es.cli.retention import import_archive, retention
from ow_es.cli.runs import runs
from ow_es.cli.schedules import schedules
from ow_es.cli.signal import signal
from ow_es.cli.worker import worker

EXIT_STATUS = """\b
Exit status:
  0  success
  1  the command failed: one line `error: <cause>` on stderr (an unreachable
     database, an unknown run, a failed doctor check, a run that failed
     under `runs start --wait`, projections that differ under --verify,
     no limits stored under `limits clear`)
  2  usage error: an unknown command or option, a bad or missing value
     (not JSON, not a duration), options that do not go together"""


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_STATUS,
)
@click.version_option(__version__, prog_name="ow-es")
@click.pass_context
def main(ctx: click.Context) -> None:
    """ow-es: durable, event-sourced workflows on PostgreSQL or SQLite.

    Worker options may also come from `[tool.ow-es]` in ./pyproject.toml (app, concurrency,
    lease, heartbeat, poll_interval, stop_timeout, connect_timeout, log_level, log_format);
    flags and environment variables win over it."""
    if ctx.invoked_subcommand == "worker":  # other commands need not read (or trust) it
        ctx.default_map = {"worker": worker_defaults()}


main.add_command(worker)
main.add_command(runs)
main.add_command(signal)
main.add_command(limits)
main.add_command(schedules)
main.add_command(migrate)
main.add_command(doctor)
main.add_command(reproject)
main.add_command(dashboard)
main.add_command(retention)
main.add_command(import_archive)


if __name__ == "__main__":
    main()
