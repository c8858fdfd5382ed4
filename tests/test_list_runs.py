"""``list_runs``: filters, pages newest first (also through runs created at one instant), and
bad arguments."""

from __future__ import annotations

import pytest

import ow_es


async def test_list_runs_filters(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    alpha = [await ow.start("alpha", {"i": i}) for i in range(4)]
    beta = [await ow.start("beta", {"i": i}) for i in range(2)]
    await alpha[0].cancel()
    await beta[1].cancel()

    def ids(page: ow_es.RunPage) -> set[str]:
        return {run.id for run in page.runs}

    everything = await ow.list_runs()
    assert len(everything.runs) == 6 and everything.next_cursor is None
    assert ids(await ow.list_runs(workflow_name="beta")) == {h.run_id for h in beta}
    assert ids(await ow.list_runs(status="canceled")) == {alpha[0].run_id, beta[1].run_id}
    pending_alpha = await ow.list_runs(status="pending", workflow_name="alpha")
    assert ids(pending_alpha) == {h.run_id for h in alpha[1:]}
    assert all(r.status == "pending" and r.workflow_name == "alpha" for r in pending_alpha.runs)
    assert (await ow.list_runs(status="completed")).runs == []
    assert (await ow.list_runs(workflow_name="gamma")).runs == []


async def test_list_runs_pages_newest_first(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    created = [(await ow.start("paged", {"i": i})).run_id for i in range(5)]
    await ow.start("unrelated", None)
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        page = await ow.list_runs(workflow_name="paged", limit=2, cursor=cursor)
        sizes.append(len(page.runs))
        seen += [run.id for run in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == list(reversed(created))

    # Unfiltered pages cover every run exactly once, newest first.
    everything: list[ow_es.WorkflowRun] = []
    cursor = None
    while True:
        page = await ow.list_runs(limit=4, cursor=cursor)
        everything += page.runs
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(everything) == 6 and len({r.id for r in everything}) == 6
    keys = [(r.created_at, r.id) for r in everything]
    assert keys == sorted(keys, reverse=True)

    # An exact fit: the last full page reports no further cursor... or an empty next page.
    page = await ow.list_runs(workflow_name="paged", limit=5)
    assert [r.id for r in page.runs] == list(reversed(created))
    assert page.next_cursor is None


async def test_list_runs_rejects_a_bad_limit_and_cursor(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    with pytest.raises(ow_es.ValidationError):
        await ow.list_runs(limit=0)
    with pytest.raises(ow_es.ValidationError):
        await ow.list_runs(cursor="definitely not a cursor")


async def test_list_runs_pages_through_runs_created_at_the_same_instant(
    ow: ow_es.OpenWorkflow,
) -> None:
    from ow_es import events as ev
    from ow_es.durations import utcnow
    from ow_es.store import Appended, AppendRequest

    await ow.connect()
    now = utcnow()
    requests = [
        AppendRequest(
            run_id=f"tie-{i:02d}",
            events=[ev.RunCreated(workflow_name="tied", input=i, available_at=now)],
        )
        for i in range(7)
    ]
    outcomes = await ow.store.append(requests)
    assert all(isinstance(o, Appended) for o in outcomes)
    assert len({(await ow.get_handle(r.run_id)).run_id for r in requests}) == 7
    created = {(await (await ow.get_handle(r.run_id)).status()).created_at for r in requests}
    assert len(created) == 1  # one transaction, one time

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = await ow.list_runs(limit=3, cursor=cursor)
        seen += [run.id for run in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted((r.run_id for r in requests), reverse=True)


async def test_list_runs_rejects_an_unknown_status(ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    with pytest.raises(ow_es.ValidationError, match="unknown status 'finished'"):
        await ow.list_runs(status="finished")
