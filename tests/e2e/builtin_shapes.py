"""The model the browser tests serve: the built-in shapes model, loaded as ``stepwatch serve``
loads it (offline, a few milliseconds a step), whose closed vocabulary the dashboard offers.

Hand :func:`load_shapes` to :class:`~stepwatch.server.harness.ServerThread`. The tests ask for
enough steps to act while a run goes on, and stop it themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from stepwatch.server.config import ServerConfig  # noqa: E402
from stepwatch.server.engine.model import LoadedModel  # noqa: E402
from stepwatch.server.models.loading import load_builtin_model  # noqa: E402

torch.set_num_threads(1)


def load_shapes(config: ServerConfig) -> list[LoadedModel]:
    """The built-in model on the CPU. Each server loads its own (a pipeline runs one run at a
    time); it takes a fraction of a second."""
    return [load_builtin_model("shapes", torch.device("cpu"))]
