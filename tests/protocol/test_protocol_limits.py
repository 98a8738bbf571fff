"""The limits fit together: the largest legal messages fit their frames."""

from __future__ import annotations

from stepwatch.protocol import (
    ErrorCode,
    Finished,
    Hello,
    HistoryEntry,
    Image,
    ResumePoint,
    RunError,
    Start,
    decode_client,
    decode_server,
    encode,
    limits,
)

# Four UTF-8 bytes each: the widest a character gets on the wire.
WIDE = "\U0001f600"


def test_the_largest_client_messages_fit_a_client_frame() -> None:
    start = Start(
        request_id=WIDE * limits.MAX_ID_CHARS,
        prompt=WIDE * limits.MAX_PROMPT_CHARS,
        negative_prompt=WIDE * limits.MAX_PROMPT_CHARS,
        model=WIDE * limits.MAX_MODEL_ID_CHARS,
        sampler=WIDE * limits.MAX_NAME_CHARS,
        scheduler=WIDE * limits.MAX_NAME_CHARS,
        verifier=WIDE * limits.MAX_NAME_CHARS,
    )
    hello = Hello(
        client=WIDE * limits.MAX_NAME_CHARS,
        token=WIDE * limits.MAX_TOKEN_CHARS,
        resume=tuple(
            ResumePoint(WIDE * (limits.MAX_ID_CHARS - 2) + f"{n:02d}", limits.MAX_INT)
            for n in range(limits.MAX_RESUME_RUNS)
        ),
    )
    for message in (start, hello):
        assert decode_client(encode(message)) == message


def test_a_full_finished_fits_a_server_frame() -> None:
    components = {
        WIDE * (limits.MAX_NAME_CHARS - 1) + chr(65 + n): 0.5 for n in range(limits.MAX_COMPONENTS)
    }
    entry = HistoryEntry(1, 1.0, components, "continue", 30.0, 1.0, limits.MAX_SECONDS)
    finished = Finished(
        run_id=WIDE * limits.MAX_ID_CHARS,
        seq=limits.MAX_INT,
        reason="failed",
        steps_run=limits.MAX_STEPS,
        elapsed=limits.MAX_SECONDS,
        final_score=1.0,
        history=(entry,) * limits.MAX_STEPS,
        image=Image(limits.MAX_SIZE, limits.MAX_SIZE, b"\xff" * limits.MAX_IMAGE_BYTES),
        error=RunError(ErrorCode.INTERNAL, WIDE * limits.MAX_MESSAGE_CHARS),
    )
    frame = encode(finished)
    assert len(frame) <= limits.MAX_SERVER_FRAME_BYTES
    assert decode_server(frame) == finished


def test_an_incompressible_full_size_image_fits_the_image_limit() -> None:
    assert 3 * limits.MAX_SIZE * limits.MAX_SIZE < limits.MAX_IMAGE_BYTES


def test_the_announced_limits_are_the_protocol_constants() -> None:
    announced = limits.protocol_limits()
    assert announced["max_frame_bytes"] == limits.MAX_CLIENT_FRAME_BYTES
    assert announced["max_prompt_chars"] == limits.MAX_PROMPT_CHARS
    assert announced["max_steps"] == limits.MAX_STEPS
    assert announced["max_width"] == announced["max_height"] == limits.MAX_SIZE
    assert all(0 <= value <= limits.MAX_INT for value in announced.values())
