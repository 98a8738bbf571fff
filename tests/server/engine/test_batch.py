"""A batch of runs on the flow-matching pipelines that hold batch tensors outside their step
callback (SD3's skip-layer and pooled embeddings, Flux's pooled embeddings and guidance vector):
a lane that leaves must take its rows of those with it, and the others go on as lone runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_search import BASE, PIXEL_TOLERANCE, pixels, registry_for, single
from tiny_models import Recorder

from stepwatch.protocol import Finished, Progress
from stepwatch.server.engine.batch import BatchMember, batch_key, run_batch
from stepwatch.server.engine.control import RunControl
from stepwatch.server.engine.lanes import DenoiserCounter
from stepwatch.server.engine.model import LoadedModel
from stepwatch.server.engine.params import RequestedParams

RUNS = (("a red circle", 3), ("a blue square", 11), ("a green triangle", 29))


class StopAt(Recorder):
    """Records a lane's events and asks its run to stop once ``step`` has been reported."""

    def __init__(self, control: RunControl, step: int) -> None:
        super().__init__()
        self.control, self.step = control, step

    def __call__(self, event: Any) -> None:
        super().__call__(event)
        if isinstance(event, Progress) and event.step == self.step:
            self.control.stop("abort")


@pytest.mark.parametrize("fixture", ["sd3_model", "flux_model"])
def test_a_lane_leaving_takes_its_held_rows_and_the_others_stay_lone_runs(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(fixture)
    overrides = {"cfg": 1.0, "cfg_max": 1.0}
    members = []
    for index, (prompt, seed) in enumerate(RUNS):
        resolved = model.resolve(RequestedParams(prompt, **{**BASE, "seed": seed, **overrides}))
        assert batch_key(model, resolved) is not None
        control = RunControl()
        sink = StopAt(control, 2) if index == 1 else Recorder()
        members.append(BatchMember(resolved, control, sink))
    counter = DenoiserCounter()
    counter.attach(model.pipeline)
    try:
        results = run_batch(model, members, registry_for(model))
    finally:
        counter.detach()

    steps = BASE["steps"]
    assert counter.batch_sizes[:2] == [3, 3]
    assert counter.batch_sizes[2:] == [2] * (steps - 2)
    assert results[1].reason == "stopped" and results[1].image is None
    for index in (0, 2):
        prompt, seed = RUNS[index]
        alone: Finished = single(model, prompt, seed, **overrides)
        assert results[index].reason == "completed"
        difference = np.abs(pixels(results[index]).astype(int) - pixels(alone).astype(int))
        assert int(difference.max()) <= PIXEL_TOLERANCE
