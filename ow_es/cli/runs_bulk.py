"""``ow-es runs cancel --status/--workflow/--older-than``: cancel every run that matches.

The matches are collected first, paging through ``list_runs`` (newest first), so canceling
cannot move the pages under the listing; then each pending or running match is canceled with
``cancel(run_id)``. Finished and already canceled matches are skipped and counted, as are runs
that finish (or disappear) between the listing and their cancel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import click

from ow_es.cli import format as fmt
from ow_es.cli.common import Connection, iso, open_client
from ow_es.client import OpenWorkflow
from ow_es.durations import utcnow
from ow_es.errors import InvalidTransition, RunNotFound

_PAGE = 1000


@dataclass(frozen=True)
class Filters:
    """What a bulk cancel matches: every given filter must hold."""

    status: str | None = None
    workflow: str | None = None
    older_than: float | None = None  # seconds: created before now minus this

    @property
    def given(self) -> bool:
        return self.status is not None or self.workflow is not None or self.older_than is not None

    def describe(self) -> str:
        parts = [f"status={self.status}"] if self.status is not None else []
        if self.workflow is not None:
            parts.append(f"workflow={self.workflow}")
        if self.older_than is not None:
            parts.append(f"created more than {self.older_than:g}s ago")
        return ", ".join(parts)


@dataclass(frozen=True)
class Match:
    run_id: str
    workflow: str
    status: str
    created_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status in ("completed", "failed", "canceled")

    def describe(self) -> str:
        return f"{self.run_id}  {self.workflow}  {self.status}  created {iso(self.created_at)}"


@dataclass
class Outcome:
    matched: list[Match]
    canceled: list[str] = field(default_factory=list)
    skipped: list[Match] = field(default_factory=list)


async def matching_runs(client: OpenWorkflow, filters: Filters) -> list[Match]:
    """Every run that matches, newest first."""
    cutoff = None
    if filters.older_than is not None:
        cutoff = utcnow() - timedelta(seconds=filters.older_than)
    found: list[Match] = []
    cursor = None
    while True:
        page = await client.list_runs(
            status=filters.status, workflow_name=filters.workflow, limit=_PAGE, cursor=cursor
        )
        found.extend(
            Match(run.id, run.workflow_name, run.status, run.created_at)
            for run in page.runs
            if cutoff is None or run.created_at < cutoff
        )
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def cancel_matching(
    conn: Connection, filters: Filters, *, dry_run: bool, cascade: bool, as_json: bool
) -> None:
    """List the matches, cancel the unfinished ones (unless ``dry_run``), print the outcome."""
    async with open_client(conn) as client:
        outcome = Outcome(await matching_runs(client, filters))
        for match in outcome.matched:
            if match.is_terminal:
                outcome.skipped.append(match)
            elif dry_run:
                outcome.canceled.append(match.run_id)
                if not as_json:
                    click.echo(f"would cancel {match.describe()}")
            elif await _cancel(client, match, cascade=cascade):
                outcome.canceled.append(match.run_id)
                if not as_json:
                    click.echo(f"canceled {match.describe()}")
            else:
                outcome.skipped.append(match)
    if as_json:
        click.echo(fmt.to_json(_record(filters, outcome, dry_run=dry_run)))
    else:
        click.echo(_summary(filters, outcome, dry_run=dry_run))


async def _cancel(client: OpenWorkflow, match: Match, *, cascade: bool) -> bool:
    """Cancel one match; False when it finished or disappeared since the listing."""
    try:
        await client.cancel(match.run_id, cascade=cascade)
    except (InvalidTransition, RunNotFound):
        return False
    return True


def _summary(filters: Filters, outcome: Outcome, *, dry_run: bool) -> str:
    done = "would cancel" if dry_run else "canceled"
    skipped = len(outcome.skipped)
    return (
        f"{done} {len(outcome.canceled)} run(s), skipped {skipped} already finished or canceled;"
        f" {len(outcome.matched)} matched {filters.describe()}"
        + ("; nothing was canceled (dry run)" if dry_run else "")
    )


def _record(filters: Filters, outcome: Outcome, *, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "filters": {
            "status": filters.status,
            "workflow": filters.workflow,
            "older_than_seconds": filters.older_than,
        },
        "matched": len(outcome.matched),
        "would_cancel" if dry_run else "canceled": outcome.canceled,
        "skipped": [{"run_id": m.run_id, "status": m.status} for m in outcome.skipped],
    }
