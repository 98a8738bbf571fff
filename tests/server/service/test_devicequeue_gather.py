"""The device queue's admission rule for batches: a worker gathers the waiting runs that fit,
and waits only for starts being admitted at that moment."""

from __future__ import annotations

import anyio
import pytest

from stepwatch.server.devicequeue import DeviceQueue

pytestmark = pytest.mark.anyio


def even(run: int) -> bool:
    return run % 2 == 0


async def test_gather_takes_the_fitting_waiting_runs_in_order_up_to_the_limit() -> None:
    queue: DeviceQueue[int] = DeviceQueue("cpu", 1, 16)
    for run in range(8):
        with queue.admission() as admission:
            admission.queue(run)
    assert await queue.take() == 0
    # nothing is being admitted: a window of minutes is never waited for
    assert await queue.gather(even, 2, window=600.0) == [2, 4]
    assert list(queue.waiting) == [1, 3, 5, 6, 7]
    assert queue.running == {0, 2, 4}


async def test_gather_waits_for_a_start_being_admitted_and_no_longer() -> None:
    queue: DeviceQueue[int] = DeviceQueue("cpu", 1, 16)
    with queue.admission() as admission:
        admission.queue(0)
    assert await queue.take() == 0
    gathered: list[int] = []

    async def worker() -> None:
        gathered.extend(await queue.gather(even, 7, window=600.0))

    async with anyio.create_task_group() as tasks:
        with queue.admission() as admission:  # a start whose run the store is recording
            tasks.start_soon(worker)
            await anyio.wait_all_tasks_blocked()
            assert gathered == []  # the worker is waiting for it
            admission.queue(2)
        with queue.admission():
            pass  # a start refused after its place was held: nothing to wait for
    assert gathered == [2]
