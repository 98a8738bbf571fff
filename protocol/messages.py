"""The closed set of stepwatch messages, both ways.

Dispatch on a decoded message with ``match`` and end with ``assert_never``::

    match message:
        case Progress(step=step, total=total):
            ...
        case Finished() as finished:
            ...
        case _:
            assert_never(message)
"""

from __future__ import annotations

import typing
from typing import Final, TypeAlias

from .client_messages import (
    ClientMessage,
    Hello,
    Ping,
    ResumePoint,
    Set,
    Start,
    Stop,
    Subscribe,
    Unsubscribe,
)
from .server_messages import (
    Accepted,
    Adjusted,
    Applied,
    Check,
    Error,
    Finished,
    HistoryEntry,
    Image,
    ModelInfo,
    Pong,
    Preview,
    Progress,
    RunError,
    RunEvent,
    RunParameters,
    ServerMessage,
    SettingChange,
    Started,
    Subscribed,
    Unsubscribed,
    VerifierInfo,
    Welcome,
)

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "RUN_EVENT_TYPES",
    "SERVER_MESSAGE_TYPES",
    "Accepted",
    "Adjusted",
    "Applied",
    "Check",
    "ClientMessage",
    "Error",
    "Finished",
    "Hello",
    "HistoryEntry",
    "Image",
    "Message",
    "ModelInfo",
    "Ping",
    "Pong",
    "Preview",
    "Progress",
    "ResumePoint",
    "RunError",
    "RunEvent",
    "RunParameters",
    "ServerMessage",
    "Set",
    "SettingChange",
    "Start",
    "Started",
    "Stop",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "VerifierInfo",
    "Welcome",
]

#: Any message of the protocol.
Message: TypeAlias = ClientMessage | ServerMessage

#: The classes of the messages a client sends, in the order of :data:`ClientMessage`.
CLIENT_MESSAGE_TYPES: Final[tuple[type[ClientMessage], ...]] = typing.get_args(ClientMessage)
#: The classes of the messages a server sends, in the order of :data:`ServerMessage`.
SERVER_MESSAGE_TYPES: Final[tuple[type[ServerMessage], ...]] = typing.get_args(ServerMessage)
#: The classes of run events, the server messages that carry ``run_id`` and ``seq``.
RUN_EVENT_TYPES: Final[tuple[type[RunEvent], ...]] = typing.get_args(RunEvent)
