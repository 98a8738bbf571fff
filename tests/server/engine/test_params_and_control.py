"""Run parameters validate themselves; the run control hands requests to the sampler once."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from stepwatch.server.engine.control import RunControl, SetRequest, StopRequest
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.events import FinishReason, StopMode
from stepwatch.server.engine.params import PreviewFormat, RunParams, SettingsChange


def test_defaults_follow_the_original_design() -> None:
    params = RunParams("red circle")
    assert params.check_interval == 5
    assert params.steps is params.cfg is params.sampler is params.verifier is None
    assert params.preview_format is PreviewFormat.WEBP


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"cfg": -1.0}, "cfg"),
        ({"cfg": float("nan")}, "cfg"),
        ({"cfg": "7"}, "cfg"),
        ({"width": 100}, "width"),
        ({"height": 0}, "height"),
        ({"seed": -1}, "seed"),
        ({"check_interval": 0}, "check_interval"),
        ({"quality_threshold": 1.5}, "quality_threshold"),
        ({"scale_factor": 0.5}, "scale_factor"),
        ({"cfg": 5.0, "cfg_max": 4.0}, "cfg_max"),
        ({"patience": 0}, "patience"),
        ({"min_steps": -1}, "min_steps"),
        ({"preview_size": 4}, "preview_size"),
        ({"preview_format": "gif"}, "preview_format"),
        ({"initial_latent": np.zeros((2, 4, 8, 8), np.float32)}, "initial_latent"),
        ({"initial_latent": np.full((1, 4, 8, 8), np.nan, np.float32)}, "initial_latent"),
    ],
)
def test_invalid_parameters_name_their_field(fields: dict[str, Any], field: str) -> None:
    arguments = {"prompt": "red circle", **fields}
    with pytest.raises(ParamError) as caught:
        RunParams(**arguments)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_settings_change_must_change_something_valid() -> None:
    with pytest.raises(ParamError, match="at least one"):
        SettingsChange()
    with pytest.raises(ParamError) as caught:
        SettingsChange(check_interval=0)
    assert caught.value.field == "check_interval"
    change = SettingsChange(quality_threshold=0.8, cfg=6.0)
    assert change.describe() == "quality_threshold=0.8, cfg=6"


def test_requests_are_taken_once_in_arrival_order() -> None:
    control = RunControl()
    assert control.take().changes == () and control.take().stop is None
    first, second = SettingsChange(cfg=4.0), SettingsChange(check_interval=2)
    control.set(first, "a")
    control.set(second, "b")
    taken = control.take()
    assert taken.changes == (SetRequest(first, "a"), SetRequest(second, "b"))
    assert control.take().changes == ()


def test_an_abort_upgrades_a_pending_finish_and_a_taken_stop_is_final() -> None:
    control = RunControl()
    control.stop(StopMode.FINISH, request_id="f")
    control.stop(StopMode.FINISH, FinishReason.SHUTDOWN, request_id="ignored")
    control.stop(StopMode.ABORT, FinishReason.ABANDONED, request_id="a")
    assert control.take().stop == StopRequest(StopMode.ABORT, FinishReason.ABANDONED, "a")
    control.stop(StopMode.ABORT, request_id="late")
    assert control.take().stop is None


def test_a_stop_reason_must_be_a_stop_reason() -> None:
    with pytest.raises(ParamError) as caught:
        RunControl().stop(StopMode.ABORT, FinishReason.COMPLETED)
    assert caught.value.field == "reason"


def test_requests_from_many_threads_all_arrive() -> None:
    control = RunControl()
    threads = [
        threading.Thread(target=control.set, args=(SettingsChange(check_interval=n + 1), str(n)))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(r.request_id or "") for r in control.take().changes) == list(range(20))
