"""Retention: delete (and first archive) terminal run trees that finished before a cutoff, in
batches of one transaction each; and load an archive back.

An archive is gzipped JSON lines, one run a line: ``{"run": row, "steps": [...], "events":
[...]}``, rows and events exactly as stored. Each batch appends a gzip member and is flushed
and fsynced before the batch's deletes are sent, so a crash loses no deleted run (at worst a
batch that then rolled back is in the archive too; importing skips runs that exist).
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec

from ow_es.durations import Duration, to_timedelta, utcnow
from ow_es.errors import ValidationError
from ow_es.store import Store
from ow_es.store.retention_port import START, ArchivedRun, SweepResult

IMPORT_BATCH = 500  # runs per import transaction


@dataclass
class RetentionReport:
    """What retention deleted (or, in a dry run, would delete)."""

    cutoff: datetime
    dry_run: bool
    runs: int = 0
    events: int = 0
    steps: int = 0
    archived: int = 0
    batches: int = 0
    archive: str | None = None
    signal_sends: int = 0  # idempotency keys of signal sends forgotten

    def add(self, batch: SweepResult) -> None:
        self.runs += batch.runs
        self.events += batch.events
        self.steps += batch.steps
        self.archived += batch.archived
        self.batches += 1


@dataclass
class ImportReport:
    """What an import loaded; ``skipped``: runs already there (their id or key taken)."""

    imported: int = 0
    events: int = 0
    steps: int = 0
    skipped: list[str] = field(default_factory=list)


class _Archive:
    """Appends batches to a gzipped JSON-lines file, durable before it returns."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._encoder = msgspec.json.Encoder()

    def _write(self, records: list[ArchivedRun]) -> None:
        created = not self.path.exists()
        with open(self.path, "ab") as raw:
            with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
                for record in records:
                    gz.write(self._encoder.encode(record) + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        if created:  # the file's directory entry too
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    async def write(self, records: list[ArchivedRun]) -> None:
        await asyncio.to_thread(self._write, records)


async def retention(
    store: Store,
    *,
    older_than: Duration,
    archive: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    batch: int = 1000,
) -> RetentionReport:
    """Delete the terminal run trees of the store's namespace that finished more than
    ``older_than`` ago (see ``OpenWorkflow.retention``)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValidationError(f"batch must be a positive integer, not {batch!r}")
    cutoff = utcnow() - to_timedelta(older_than, "older_than")
    path = None if archive is None else os.fspath(archive)
    if path is not None and not dry_run:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValidationError(f"archive folder {folder!r} does not exist")
    sink = _Archive(path).write if path is not None and not dry_run else None
    report = RetentionReport(cutoff=cutoff, dry_run=dry_run, archive=path)
    after = START
    while True:
        result = await store.retention.sweep(cutoff, after, batch, dry_run=dry_run, archive=sink)
        if result.cursor is None:
            break
        report.add(result)
        after = result.cursor
    while forgotten := await store.retention.forget_sends(cutoff, batch, dry_run=dry_run):
        report.signal_sends += forgotten
        if dry_run or forgotten < batch:
            break
    return report


def read_archive(path: str | os.PathLike[str]) -> Iterator[ArchivedRun]:
    """The runs of an archive, in the order written."""
    decoder = msgspec.json.Decoder(ArchivedRun)
    with gzip.open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ValidationError(f"{os.fspath(path)}, line {number}: {exc}") from None


async def import_archive(store: Store, path: str | os.PathLike[str]) -> ImportReport:
    """Load an archive's runs back into the store's namespace (see
    ``OpenWorkflow.import_archive``)."""
    if not os.path.isfile(path):
        raise ValidationError(f"no archive at {os.fspath(path)!r}")
    report = ImportReport()
    chunk: list[ArchivedRun] = []
    records = read_archive(path)
    try:
        while True:
            chunk = await asyncio.to_thread(_take, records, IMPORT_BATCH)
            if not chunk:
                return report
            inserted = set(await store.retention.restore(chunk))
            for record in chunk:
                if record.run.id in inserted:
                    report.imported += 1
                    report.events += len(record.events)
                    report.steps += len(record.steps)
                else:
                    report.skipped.append(record.run.id)
    except (OSError, EOFError) as exc:
        raise ValidationError(f"cannot read archive {os.fspath(path)!r}: {exc}") from None


def _take(records: Iterator[ArchivedRun], n: int) -> list[ArchivedRun]:
    out: list[ArchivedRun] = []
    for record in records:
        out.append(record)
        if len(out) == n:
            break
    return out
