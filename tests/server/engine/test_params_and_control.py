"""Requested parameters are checked with the protocol's own bounds; the run control hands
requests to the sampler once."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from stepwatch.server.engine.control import RunControl, SetRequest, StopRequest
from stepwatch.server.engine.errors import ParamError
from stepwatch.server.engine.params import (
    RequestedParams,
    check_change,
    describe_change,
)


def test_defaults_follow_the_original_design() -> None:
    params = RequestedParams("red circle")
    assert params.steps is params.cfg is params.sampler is params.verifier is None
    assert params.check_interval is None and params.wire_default("check_interval") == 5
    assert params.wire_default("preview_format") == "jpeg"
    assert params.wire_default("scale_factor") == 1.25 and params.wire_default("patience") == 1


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
        RequestedParams(**arguments)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_settings_change_must_change_something_valid() -> None:
    with pytest.raises(ParamError, match="at least one"):
        check_change({})
    with pytest.raises(ParamError) as caught:
        check_change({"check_interval": 0})
    assert caught.value.field == "check_interval"
    with pytest.raises(ParamError) as unknown:
        check_change({"steps": 3.0})  # type: ignore[dict-item]
    assert unknown.value.field == "steps"
    change = check_change({"quality_threshold": 0.8, "cfg": 6.0})
    assert describe_change(change) == "quality_threshold=0.8, cfg=6"


def test_requests_are_taken_once_in_arrival_order() -> None:
    control = RunControl()
    assert control.take().changes == () and control.take().stop is None
    first, second = {"cfg": 4.0}, {"check_interval": 2.0}
    control.set(first, "a")
    control.set(second, "b")
    taken = control.take()
    assert taken.changes == (SetRequest(first, "a"), SetRequest(second, "b"))
    assert control.take().changes == ()


def test_an_abort_upgrades_a_pending_finish_and_a_taken_stop_is_final() -> None:
    control = RunControl()
    control.stop("finish", request_id="f")
    control.stop("finish", "shutdown", request_id="ignored")
    control.stop("abort", "abandoned", request_id="a")
    assert control.take().stop == StopRequest("abort", "abandoned", "a")
    control.stop("abort", request_id="late")
    assert control.take().stop is None


def test_a_stop_reason_must_be_a_stop_reason() -> None:
    with pytest.raises(ParamError) as caught:
        RunControl().stop("abort", "completed")
    assert caught.value.field == "reason"
    with pytest.raises(ParamError) as mode:
        RunControl().stop("pause")  # type: ignore[arg-type]
    assert mode.value.field == "mode"


def test_requests_from_many_threads_all_arrive() -> None:
    control = RunControl()
    threads = [
        threading.Thread(target=control.set, args=({"check_interval": n + 1.0}, str(n)))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(r.request_id or "") for r in control.take().changes) == list(range(20))
