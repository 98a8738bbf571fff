"""The outbox rules on their own: what coalesces, what is never dropped, when it overflows."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from stepwatch.protocol import (
    ADDED_SERVER_FIELDS,
    Applied,
    CandidateResult,
    Check,
    Error,
    ErrorCode,
    Finished,
    Image,
    Preview,
    Progress,
    RunEvent,
    decode_server,
)
from stepwatch.server.eventlog import EventLog
from stepwatch.server.outbox import Outbox, OutboxOverflow
from stepwatch.server.wireframes import binary_frame

pytestmark = pytest.mark.anyio

PREVIEW = Preview("png", 1, 1, b"\x89PNG")


def progress(run_id: str, seq: int) -> Progress:
    return Progress(seq, 100, 0.1 * seq, 1.0, run_id=run_id, seq=seq)


def check(run_id: str, seq: int) -> Check:
    return Check(seq, 0.5, {}, 0.7, "continue", "why", 3.0, PREVIEW, run_id=run_id, seq=seq)


def applied(run_id: str, seq: int) -> Applied:
    return Applied("q", seq, (), "finish", run_id=run_id, seq=seq)


async def drain(outbox: Outbox) -> list[object]:
    outbox.close()
    frames = []
    while (frame := await outbox.get()) is not None:
        frames.append(decode_server(frame))
    return frames


def logged(log: EventLog, *events: RunEvent) -> list:  # type: ignore[type-arg]
    return [log.append(event) for event in events]


async def test_newer_progress_supersedes_waiting_progress_of_the_same_run() -> None:
    a, b = EventLog(), EventLog()
    outbox = Outbox(capacity=16)
    for event in logged(a, progress("a", 1), progress("a", 2), check("a", 3), progress("a", 4)):
        outbox.event("a", event)
    outbox.event("b", b.append(progress("b", 1)))
    outbox.event("a", a.append(progress("a", 5)))
    sent = await drain(outbox)
    assert [(m.run_id, m.seq) for m in sent] == [("a", 3), ("b", 1), ("a", 5)]  # type: ignore[attr-defined]


async def test_a_newer_preview_collapses_a_waiting_one_but_never_the_check() -> None:
    log = EventLog()
    outbox = Outbox(capacity=16)
    for event in logged(log, check("a", 1), applied("a", 2), check("a", 3)):
        outbox.event("a", event)
    first, second, third = await drain(outbox)
    assert isinstance(first, Check) and (first.seq, first.preview) == (1, None)
    assert second == applied("a", 2)
    assert third == check("a", 3)


async def test_a_sent_preview_is_not_collapsed_later() -> None:
    log = EventLog()
    outbox = Outbox(capacity=16)
    outbox.event("a", log.append(check("a", 1)))
    assert decode_server(await outbox.get() or b"") == check("a", 1)
    outbox.event("a", log.append(check("a", 2)))
    assert await drain(outbox) == [check("a", 2)]


async def test_it_overflows_when_undroppable_frames_exceed_its_capacity() -> None:
    log = EventLog()
    outbox = Outbox(capacity=8)
    for seq in range(1, 9):
        outbox.event("a", log.append(applied("a", seq)))
    outbox.event("a", log.append(progress("a", 9)))  # progress counts as well
    assert outbox.overflowed and outbox.closed
    with pytest.raises(OutboxOverflow):
        await outbox.get()


async def test_a_replay_does_not_count_against_the_capacity() -> None:
    log = EventLog()
    outbox = Outbox(capacity=8)
    for seq in range(1, 21):
        outbox.event("a", log.append(applied("a", seq)), replay=True)
    outbox.reply(Error(ErrorCode.UNKNOWN_RUN, "no such run"))
    assert not outbox.overflowed and len(outbox) == 1
    sent = await drain(outbox)
    assert len(sent) == 21


async def test_forgetting_a_run_drops_only_its_waiting_events() -> None:
    a, b = EventLog(), EventLog()
    outbox = Outbox(capacity=8)
    outbox.event("a", a.append(applied("a", 1)))
    outbox.event("b", b.append(applied("b", 1)))
    outbox.event("a", a.append(progress("a", 2)))
    outbox.forget_run("a")
    assert len(outbox) == 1
    assert await drain(outbox) == [applied("b", 1)]


async def test_a_finished_event_is_never_dropped() -> None:
    log = EventLog()
    outbox = Outbox(capacity=8)
    events = [
        progress("a", 1),
        Finished("completed", 1, 0.1, None, (), None, None, run_id="a", seq=2),
    ]
    for event in logged(log, *events):
        outbox.event("a", event)
    assert await drain(outbox) == events


async def test_each_watcher_gets_the_events_as_its_features_read_them() -> None:
    """An older watcher never receives a field it would refuse: an applied of one candidate
    is left out for it, the candidates' images leave finished, a check's candidates stay."""
    log = EventLog()
    stopped = Applied("q", 3, (), None, candidate_stopped=1, run_id="a", seq=2)
    result = CandidateResult(1, 0.5, "finished", 8, image=Image(8, 8, b"\x89PNG"))
    finished = Finished(
        "completed", 8, 1.0, 0.5, (), None, None, candidates=(result,), run_id="a", seq=3
    )
    events = logged(log, check("a", 1), stopped, finished)
    newer, older, everything = Outbox(16), Outbox(16), Outbox(16)
    newer.features = frozenset(ADDED_SERVER_FIELDS)
    older.features = frozenset({"candidates", "compute", "search"})
    for outbox in (newer, older, everything):
        for event in events:
            outbox.event("a", event)
    assert [m.seq for m in await drain(older)] == [1, 3]  # type: ignore[attr-defined]
    older_finished = await drain_last(events, frozenset({"candidates"}))
    assert older_finished.candidates[0].image is None
    assert await drain(newer) == [*(e.message for e in events)]
    assert await drain(everything) == [*(e.message for e in events)]
    # The downgraded frame is made once per set of features and shared.
    assert events[2].seen_by(older.features) is events[2].seen_by(frozenset(older.features))


async def drain_last(events: list, features: frozenset[str]) -> Finished:  # type: ignore[type-arg]
    seen = events[-1].seen_by(features)
    assert seen is not None
    message = decode_server(seen.frame)
    assert isinstance(message, Finished)
    return message


# -- writing through a socket writer ---------------------------------------------------------


class Socket:
    """A :class:`~stepwatch.server.wireframes.FrameWriter` whose socket takes writes while
    ``open``: what a backed-up transport (paused writing) looks like to the outbox."""

    def __init__(self) -> None:
        self.open = True
        self.written: list[bytes] = []

    def can_write(self) -> bool:
        return self.open

    def write(self, frame: bytes) -> None:
        assert self.open
        self.written.append(frame)

    async def send(self, frames: Sequence[bytes]) -> None:
        self.written.extend(frames)


def payloads(frames: Sequence[bytes]) -> list[object]:
    return [decode_server(parse_frame(frame)) for frame in frames]


def parse_frame(data: bytes) -> bytes:
    """The payload of one whole WebSocket frame, read by websockets' own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert frame.fin and frame.opcode is Opcode.BINARY
        return bytes(frame.data)
    raise AssertionError("the frame was cut short")


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 200_000])
def test_a_binary_frame_reads_back_as_its_payload(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert parse_frame(binary_frame(payload)) == payload


async def test_an_event_is_written_at_once_as_one_frame_shared_by_every_watcher() -> None:
    log = EventLog()
    sockets = [Socket(), Socket()]
    outboxes = [Outbox(capacity=8), Outbox(capacity=8)]
    for outbox, sock in zip(outboxes, sockets, strict=True):
        outbox.attach(sock)
    event = log.append(check("a", 1))
    for outbox in outboxes:
        outbox.event("a", event)
    assert [len(outbox) for outbox in outboxes] == [0, 0]  # nothing queued: written through
    first, second = (sock.written[0] for sock in sockets)
    assert first is second  # framed once, the same bytes object to both
    assert payloads([first]) == [check("a", 1)]


async def test_behind_a_backed_up_socket_frames_queue_coalesce_and_keep_their_order() -> None:
    log = EventLog()
    sock = Socket()
    outbox = Outbox(capacity=16)
    outbox.attach(sock)
    outbox.event("a", log.append(progress("a", 1)))
    sock.open = False  # the transport paused writing
    for event in logged(log, check("a", 2), progress("a", 3), check("a", 4), progress("a", 5)):
        outbox.event("a", event)
    sock.open = True
    # The socket takes writes again, but frames wait: a new one goes behind them, not ahead.
    outbox.event("a", log.append(applied("a", 6)))
    assert len(sock.written) == 1 and len(outbox) == 4
    batch = await outbox.take()
    outbox.event("a", log.append(applied("a", 7)))  # the batch is being sent: this waits too
    await sock.send(batch)
    outbox.sent()
    outbox.event("a", log.append(progress("a", 8)))  # not behind 7, which still waits
    rest = await outbox.take()
    await sock.send(rest)
    outbox.sent()
    outbox.event("a", log.append(applied("a", 9)))  # nothing waits: written through again
    assert len(outbox) == 0
    sent = payloads(sock.written)
    assert [m.seq for m in sent] == [1, 2, 4, 5, 6, 7, 8, 9]  # type: ignore[attr-defined]
    assert sent[1].preview is None and sent[2] == check("a", 4)  # type: ignore[attr-defined]


async def test_a_batch_holds_what_waits_up_to_its_byte_bound() -> None:
    log = EventLog()
    sock = Socket()
    outbox = Outbox(capacity=16, batch_bytes=1)
    outbox.attach(sock)
    sock.open = False
    for seq in (1, 2):
        outbox.event("a", log.append(applied("a", seq)))
    assert len(await outbox.take()) == 1  # at least one frame, however small the bound
    outbox.sent()
    outbox.batch_bytes = 1 << 20
    outbox.event("a", log.append(applied("a", 3)))
    assert payloads(await outbox.take()) == [applied("a", 2), applied("a", 3)]


async def test_a_backed_up_socket_still_overflows_its_outbox() -> None:
    log = EventLog()
    sock = Socket()
    outbox = Outbox(capacity=8)
    outbox.attach(sock)
    sock.open = False
    for seq in range(1, 10):
        outbox.event("a", log.append(applied("a", seq)))
    assert outbox.overflowed and sock.written == []
    with pytest.raises(OutboxOverflow):
        await outbox.take()


async def test_a_replay_queues_even_to_an_idle_socket_so_its_old_previews_collapse() -> None:
    log = EventLog()
    sock = Socket()
    outbox = Outbox(capacity=8)
    outbox.attach(sock)
    for event in logged(log, check("a", 1), check("a", 2)):
        outbox.event("a", event, replay=True)
    outbox.event("a", log.append(progress("a", 3)))  # live, but behind the replay
    assert sock.written == []
    first, second, third = payloads(await outbox.take())
    assert isinstance(first, Check) and first.preview is None
    assert (second, third) == (check("a", 2), progress("a", 3))
