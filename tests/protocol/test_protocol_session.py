"""The client's session state machine without sockets: hello, matching, de-duplication, resume."""

from __future__ import annotations

import pytest
from protocol_examples import PARAMETERS, RUN, TOKEN

from stepwatch.protocol import (
    ADDED_SERVER_FIELDS,
    Accepted,
    Answered,
    Applied,
    ClientMessage,
    ClientSession,
    ClientState,
    Duplicate,
    Error,
    ErrorCode,
    Finished,
    Hello,
    Lost,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    ResumePoint,
    ServerMessage,
    SessionEvent,
    Set,
    Start,
    Started,
    Stop,
    Subscribe,
    Subscribed,
    Unasked,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_client,
    encode,
    limits,
)

FEATURES = tuple(sorted(ADDED_SERVER_FIELDS))
OTHER = "r-other"


def welcome(**announced: int) -> Welcome:
    return Welcome("stepwatch/test", ("resume",), announced, (), ())


def progress(seq: int, run_id: str = RUN) -> Progress:
    return Progress(seq, 30, 0.1 * seq, None, run_id=run_id, seq=seq)


def finished(seq: int, run_id: str = RUN) -> Finished:
    return Finished("stopped", seq, 1.0, None, (), None, None, run_id=run_id, seq=seq)


def applied(seq: int, request_id: str, run_id: str = RUN) -> Applied:
    return Applied(request_id, seq, (), "finish", run_id=run_id, seq=seq)


def sent(session: ClientSession) -> list[ClientMessage]:
    return [decode_client(frame) for frame in session.data_to_send()]


def feed(session: ClientSession, *messages: ServerMessage) -> list[SessionEvent]:
    for message in messages:
        session.receive_data(encode(message))
    return session.events_received()


def opened() -> ClientSession:
    """A session whose first connection is open."""
    session = ClientSession()
    session.hello("tests/1")
    session.data_to_send()
    feed(session, welcome())
    return session


def started_run(session: ClientSession, request_id: str = "q1", run_id: str = RUN) -> None:
    session.send(Start(request_id=request_id, prompt="red circle"))
    session.data_to_send()
    feed(session, Accepted(request_id, run_id, TOKEN, 0))


def test_hello_comes_first_and_welcome_opens() -> None:
    session = ClientSession()
    assert session.state is ClientState.CONNECTING and session.welcome is None
    session.hello("tests/1", token="secret")
    assert session.state is ClientState.AWAITING_WELCOME and session.connections == 1
    assert sent(session) == [Hello(client="tests/1", features=FEATURES, token="secret")]
    greeting = welcome()
    assert feed(session, greeting) == [greeting]
    assert session.state is ClientState.OPEN and session.welcome == greeting


def test_a_welcome_nobody_waits_for_is_unasked() -> None:
    session = opened()
    assert feed(session, welcome()) == [Unasked(welcome())]


def test_a_second_hello_sent_raw_changes_no_state() -> None:
    session = opened()
    session.send(Hello(client="tests/1"))
    assert session.state is ClientState.OPEN and session.connections == 1
    assert sent(session) == [Hello(client="tests/1")]


def test_a_start_is_answered_by_accepted_and_its_run_is_followed() -> None:
    session = opened()
    start = Start(request_id="q1", prompt="red circle")
    session.send(start)
    assert sent(session) == [start]
    assert not session.follows(RUN)
    accepted = Accepted("q1", RUN, TOKEN, 0)
    assert feed(session, accepted) == [Answered(start, accepted)]
    assert session.follows(RUN) and session.last_seq(RUN) == 0


def test_replies_nobody_waits_for_are_unasked() -> None:
    session = opened()
    accepted = Accepted("q9", RUN, TOKEN, 0)
    subscribed = Subscribed(RUN, "running", 3)
    unsubscribed = Unsubscribed(RUN)
    assert feed(session, accepted, subscribed, unsubscribed) == [
        Unasked(accepted),
        Unasked(subscribed),
        Unasked(unsubscribed),
    ]
    assert not session.follows(RUN)


def test_an_error_answers_its_start_or_steer_by_request_id() -> None:
    session = opened()
    start = Start(request_id="q1", prompt="red circle")
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session.send(start)
    session.send(stop)
    full = Error(ErrorCode.QUEUE_FULL, "full", request_id="q1")
    forbidden = Error(ErrorCode.FORBIDDEN, "no", request_id="q2", run_id=RUN)
    stray = Error(ErrorCode.RUN_FINISHED, "over", request_id="q3", run_id=RUN)
    assert feed(session, full, forbidden, stray) == [
        Answered(start, full),
        Answered(stop, forbidden),
        stray,
    ]


def test_errors_about_no_request_are_reported_as_they_are() -> None:
    session = opened()
    limited = Error(ErrorCode.RATE_LIMITED, "slow down")
    session.send(Ping(7))
    assert sent(session) == [Ping(7)]
    assert feed(session, limited, Pong(7)) == [limited, Pong(7)]


def test_events_are_tracked_per_run_and_repeats_are_duplicates() -> None:
    session = opened()
    started_run(session)
    first = Started(PARAMETERS, run_id=RUN, seq=1)
    assert feed(session, first, progress(2)) == [first, progress(2)]
    assert feed(session, progress(2), progress(1)) == [
        Duplicate(progress(2)),
        Duplicate(progress(1)),
    ]
    assert session.last_seq(RUN) == 2
    # A run the session does not follow is passed on as it comes.
    assert feed(session, progress(5, OTHER)) == [progress(5, OTHER)]
    assert session.last_seq(OTHER) is None


def test_a_finished_run_is_ended_and_later_events_of_it_are_duplicates() -> None:
    session = opened()
    started_run(session)
    assert feed(session, finished(4)) == [finished(4)]
    assert session.ended(RUN) and not session.follows(RUN)
    assert feed(session, progress(3)) == [Duplicate(progress(3))]


def test_a_steer_is_answered_by_its_applied_even_a_repeated_one() -> None:
    session = opened()
    started_run(session)
    feed(session, progress(5))
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session.send(stop)
    assert sent(session) == [stop]
    late = applied(4, "q2")
    assert feed(session, late) == [Duplicate(late), Answered(stop, late)]
    # An applied nobody waits for is a run event like any other.
    assert feed(session, applied(6, "q8")) == [applied(6, "q8")]


def test_subscribe_is_matched_by_run_id_and_the_replay_starts_where_asked() -> None:
    session = opened()
    subscribe = Subscribe(RUN, 2)
    session.send(subscribe)
    assert sent(session) == [subscribe]
    assert session.follows(RUN) and session.last_seq(RUN) is None
    subscribed = Subscribed(RUN, "running", 4)
    assert feed(session, subscribed) == [Answered(subscribe, subscribed)]
    assert session.last_seq(RUN) == 2
    assert feed(session, progress(2), progress(3)) == [Duplicate(progress(2)), progress(3)]


def test_watching_again_replays_from_the_lowest_point_asked() -> None:
    session = opened()
    started_run(session)
    feed(session, progress(1), progress(2), progress(3))
    assert session.replay_from(RUN, 10) == 3
    assert session.replay_from(RUN, 0) == 0
    again = Subscribe(RUN, 1)
    session.send(again)
    assert session.replay_from(RUN, 2) == 1
    feed(session, progress(4))
    subscribed = Subscribed(RUN, "running", 4)
    assert feed(session, subscribed) == [Answered(again, subscribed)]
    # The replay repeats seq 2 to 4 for the new watcher: they are new to the session again.
    assert feed(session, progress(2), progress(4)) == [progress(2), progress(4)]


def test_watching_a_finished_run_again_replays_it() -> None:
    session = opened()
    started_run(session)
    feed(session, finished(2))
    watch = Subscribe(RUN, 0)
    session.send(watch)
    subscribed = Subscribed(RUN, "finished", 2)
    assert feed(session, subscribed) == [Answered(watch, subscribed)]
    assert not session.ended(RUN)
    assert feed(session, finished(2)) == [finished(2)]
    assert session.ended(RUN)


def test_unknown_run_answers_every_watch_of_it_and_forgets_it() -> None:
    session = opened()
    started_run(session)
    first, second = Subscribe(RUN, 0), Subscribe(RUN, 3)
    session.send(first)
    session.send(second)
    unknown = Error(ErrorCode.UNKNOWN_RUN, "gone", run_id=RUN)
    assert feed(session, unknown) == [Answered(first, unknown), Answered(second, unknown), unknown]
    assert not session.follows(RUN)
    other = Error(ErrorCode.UNKNOWN_RUN, "gone", run_id=OTHER)
    assert feed(session, other) == [other]


def test_unsubscribe_stops_following_and_is_answered() -> None:
    session = opened()
    started_run(session)
    leave = Unsubscribe(RUN)
    session.send(leave)
    assert sent(session) == [leave] and not session.follows(RUN)
    assert feed(session, Unsubscribed(RUN)) == [Answered(leave, Unsubscribed(RUN))]
    session.send(Unsubscribe(OTHER))
    unknown = Error(ErrorCode.UNKNOWN_RUN, "gone", run_id=OTHER)
    assert feed(session, unknown) == [Answered(Unsubscribe(OTHER), unknown), unknown]


def test_a_refused_message_is_neither_sent_nor_recorded() -> None:
    session = opened()
    with pytest.raises(ProtocolError):
        session.send(Ping(limits.MAX_INT + 1))
    assert session.data_to_send() == []
    with pytest.raises(ProtocolError) as caught:
        session.receive_data(b"\xc1")
    assert caught.value.code is ErrorCode.MALFORMED_FRAME
    assert session.events_received() == []


def test_a_drop_loses_unanswered_starts_and_unsent_frames() -> None:
    session = ClientSession()
    early = Start(request_id="q0", prompt="red circle")
    session.send(early)  # before hello: a test may; the server will refuse it
    session.hello("tests/1")
    feed(session, welcome())
    start = Start(request_id="q1", prompt="blue square")
    session.send(start)
    session.send(Unsubscribe(OTHER))
    session.connection_lost()
    assert session.state is ClientState.CLOSED
    assert session.data_to_send() == []
    assert session.events_received() == [Lost(start)]
    # The start sent before the first hello belongs to no connection that dropped.
    session.hello("tests/1")
    feed(session, welcome())
    accepted = Accepted("q0", RUN, TOKEN, 0)
    assert feed(session, accepted, Unsubscribed(OTHER)) == [
        Answered(early, accepted),
        Unasked(Unsubscribed(OTHER)),
    ]


def test_a_reconnect_resumes_every_followed_run_from_its_last_seq() -> None:
    session = opened()
    started_run(session)
    feed(session, progress(1), progress(2))
    watch = Subscribe(OTHER, 5)
    session.send(watch)
    session.data_to_send()
    session.connection_lost()
    assert session.resume_points() == [ResumePoint(RUN, 2), ResumePoint(OTHER, 5)]
    session.hello("tests/1")
    assert session.connections == 2
    assert sent(session) == [
        Hello(
            client="tests/1", features=FEATURES, resume=(ResumePoint(RUN, 2), ResumePoint(OTHER, 5))
        )
    ]
    feed(session, welcome())
    resumed, answered = Subscribed(RUN, "running", 3), Subscribed(OTHER, "running", 6)
    assert feed(session, resumed, answered) == [resumed, Answered(watch, answered)]
    assert feed(session, progress(2), progress(3)) == [Duplicate(progress(2)), progress(3)]


def test_resume_points_beyond_the_limit_go_out_as_subscribe_after_welcome() -> None:
    session = ClientSession(resume_limit=3)
    assert session.max_resume == 3
    session.hello("tests/1")
    feed(session, welcome(max_resume_runs=2))
    assert session.max_resume == 2
    for index in range(3):
        started_run(session, f"q{index}", f"r-{index}")
    session.connection_lost()
    session.hello("tests/1")
    points = (ResumePoint("r-0", 0), ResumePoint("r-1", 0))
    assert sent(session) == [Hello(client="tests/1", features=FEATURES, resume=points)]
    feed(session, welcome())
    assert session.max_resume == 3
    assert sent(session) == [Subscribe("r-2", 0)]


def test_resume_points_named_by_the_caller_are_followed() -> None:
    session = ClientSession()
    points = (ResumePoint(RUN, 4),)
    session.hello("tests/1", resume=points)
    assert sent(session) == [Hello(client="tests/1", features=FEATURES, resume=points)]
    feed(session, welcome())
    assert feed(session, Subscribed(RUN, "running", 5), progress(4), progress(5)) == [
        Subscribed(RUN, "running", 5),
        Duplicate(progress(4)),
        progress(5),
    ]


def steered_then_dropped(request: Stop | Set) -> ClientSession:
    session = opened()
    started_run(session)
    feed(session, progress(1), progress(2))
    session.send(request)
    session.data_to_send()
    session.connection_lost()
    session.hello("tests/1")
    session.data_to_send()
    feed(session, welcome())
    assert session.data_to_send() == []  # not before the run's replay is over
    return session


def test_a_steer_lost_in_a_drop_is_resent_once_the_replay_has_not_shown_it() -> None:
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session = steered_then_dropped(stop)
    feed(session, Subscribed(RUN, "running", 4), progress(3))
    assert session.data_to_send() == []
    feed(session, progress(4))
    assert sent(session) == [stop]
    assert feed(session, applied(5, "q2")) == [applied(5, "q2"), Answered(stop, applied(5, "q2"))]
    feed(session, progress(6))
    assert session.data_to_send() == []  # once


def test_a_steer_the_replay_shows_is_not_resent() -> None:
    change = Set(request_id="q2", run_id=RUN, token=TOKEN, cfg=4.0)
    session = steered_then_dropped(change)
    events = feed(session, Subscribed(RUN, "running", 3), applied(3, "q2"))
    assert events[-1] == Answered(change, applied(3, "q2"))
    assert session.data_to_send() == []


def test_a_steer_is_resent_at_once_when_the_replay_has_nothing_new() -> None:
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session = steered_then_dropped(stop)
    feed(session, Subscribed(RUN, "running", 2))
    assert sent(session) == [stop]


def test_a_steer_of_a_run_that_finished_in_the_replay_is_resent() -> None:
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session = steered_then_dropped(stop)
    feed(session, Subscribed(RUN, "finished", 3), finished(3))
    assert sent(session) == [stop]
    over = Error(ErrorCode.RUN_FINISHED, "over", request_id="q2", run_id=RUN)
    assert feed(session, over) == [Answered(stop, over)]


def test_a_steer_of_a_run_no_replay_will_come_for_is_resent_at_welcome() -> None:
    session = opened()
    started_run(session)
    feed(session, finished(2))
    stop = Stop(request_id="q2", run_id=RUN, token=TOKEN)
    session.send(stop)
    session.data_to_send()
    session.connection_lost()
    session.hello("tests/1")
    assert sent(session) == [Hello(client="tests/1", features=FEATURES)]
    feed(session, welcome())
    assert sent(session) == [stop]
