"""/health's view of the store (graphql_api/probe.py): pinged in the background, a hanging or failing store
stops counting as answering, and /health itself never waits for a ping once one has finished."""

from __future__ import annotations

import asyncio

from graphql_api.probe import StoreProbe


class Store:
    """A store's ping the test controls (the probe is what is tested)."""

    def __init__(self) -> None:
        self.answer = True
        self.hang = asyncio.Event()
        self.hanging = False
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.hanging:
            await self.hang.wait()
        return self.answer


async def test_the_first_question_pings_then_answers_come_from_the_last_ping() -> None:
    store = Store()
    probe = StoreProbe(store.ping, every_s=3600)
    assert await probe.answers() and store.pings == 1
    store.answer = False
    assert await probe.answers() and store.pings == 1  # no ping of its own: the last one answered
    assert not await probe.ping()
    assert await probe.answers()  # a failed ping does not erase a recent success ...


async def test_no_answer_for_longer_than_stale_after_counts_as_down_and_health_never_waits() -> None:
    store, now = Store(), [0.0]
    probe = StoreProbe(store.ping, every_s=0.01, stale_after_s=0.2, clock=lambda: now[0])
    stop = asyncio.Event()
    running = asyncio.create_task(probe.run(stop))
    while not probe.checked:
        await asyncio.sleep(0.001)
    assert await probe.answers()
    store.hanging = True  # the store stops answering: pings hang until their timeout
    now[0] += 0.1
    started = asyncio.get_running_loop().time()
    assert await probe.answers()  # 0.1 s since the last answer: still fine
    now[0] += 0.2
    assert not await probe.answers()  # ... but not 0.3 s
    assert asyncio.get_running_loop().time() - started < 0.1  # never waited for the hanging ping
    store.hanging = False
    store.hang.set()
    while not await probe.answers():  # answering again at the next ping
        await asyncio.sleep(0.005)
    stop.set()
    await running
