// The candidate grid's state from a search run's checks and end (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import { candidateCurves, candidateGrid, fateText } from "../src/candidates.js";
import { RunState } from "../src/runstate.js";

function check(seq, step, candidates) {
  return {
    type: "check",
    seq,
    step,
    score: Math.max(...candidates.map((c) => c.score)),
    components: {},
    threshold: 0.7,
    decision: "continue",
    reason: "",
    cfg: 3,
    preview: null,
    candidates,
  };
}

const c = (candidate, score, fate = "live", parent = null) => ({ candidate, score, fate, parent });

function pruned() {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 6, cfg: 3, preview_size: 0 } });
  run.apply(check(2, 2, [c(0, 0.2), c(1, 0.9), c(2, 0.1, "pruned"), c(3, 0.5, "pruned")]));
  run.apply(check(3, 4, [c(0, 0.3, "pruned"), c(1, 0.95)]));
  return run;
}

test("a single run has no grid", () => {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 6, cfg: 3 } });
  run.apply({ ...check(2, 2, [c(0, 0.5)]), candidates: undefined });
  assert.equal(candidateGrid(run), null);
});

test("pruned candidates are greyed and keep their last score; the compute so far counts lanes", () => {
  const run = pruned();
  run.apply({ type: "progress", seq: 4, step: 5, total: 6, elapsed: 1, eta: 0.2 });
  const grid = candidateGrid(run);
  assert.deepEqual(
    grid.cells.map((cell) => [cell.candidate, cell.score, cell.greyed]),
    [
      [0, 0.3, true],
      [1, 0.95, false],
      [2, 0.1, true],
      [3, 0.5, true],
    ],
  );
  assert.deepEqual(grid.cells[1].scores, [
    { step: 2, score: 0.9 },
    { step: 4, score: 0.95 },
  ]);
  // 4 lanes for steps 1-2, 2 for 3-4, 1 for step 5; CFG doubles: 2 × (8 + 4 + 1).
  assert.deepEqual(grid.compute, { evaluations: 26, single: 12 });
});

test("the end gives the fates and the compute the server counted", () => {
  const run = pruned();
  run.apply({
    type: "finished",
    seq: 5,
    reason: "completed",
    steps_run: 6,
    elapsed: 1,
    final_score: 0.97,
    history: [],
    image: null,
    error: null,
    candidates: [
      { candidate: 0, final_score: 0.3, fate: "pruned", steps_run: 4, lineage: [] },
      { candidate: 1, final_score: 0.97, fate: "chosen", steps_run: 6, lineage: [] },
      { candidate: 2, final_score: 0.1, fate: "pruned", steps_run: 2, lineage: [] },
      { candidate: 3, final_score: 0.5, fate: "pruned", steps_run: 2, lineage: [] },
    ],
    compute: {
      denoiser_evaluations: 28,
      verifier_calls: 7,
      preview_decodes: 7,
      single_run_evaluations: 12,
    },
  });
  const grid = candidateGrid(run);
  assert.equal(fateText(grid.cells[1]), "chosen");
  assert.deepEqual(grid.compute, { evaluations: 28, single: 12 });
});

test("a resampled candidate names its parent", () => {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 4, cfg: 1 } });
  run.apply(check(2, 2, [c(0, 0.9), c(1, 0.1, "resampled", 0)]));
  const grid = candidateGrid(run);
  assert.equal(fateText(grid.cells[1]), "from #0 at step 2");
  assert.equal(fateText(grid.cells[0]), "live");
});

test("the owner's stop greys a candidate at once, and the end says the owner decided", () => {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 6, cfg: 1, preview_size: 0 } });
  run.apply(check(2, 2, [c(0, 0.3), c(1, 0.9), c(2, 0.5)]));
  run.apply({
    type: "applied",
    seq: 3,
    request_id: "q",
    step: 3,
    changes: [],
    stop: null,
    candidate_stopped: 0,
  });
  assert.deepEqual(run.ownerCandidates, [{ step: 3, candidate: 0, action: "stop" }]);
  assert.equal(candidateGrid(run).cells[0].greyed, true); // before the next check
  run.apply(check(4, 4, [c(1, 0.97), c(2, 0.6)]));
  const live = candidateGrid(run);
  assert.equal(live.cells[0].greyed, true);
  assert.equal(fateText(live.cells[0]), "stopped by its owner");
  assert.deepEqual(
    live.cells.map((cell) => cell.live),
    [false, true, true],
  );
  run.apply({
    type: "finished",
    seq: 5,
    reason: "completed",
    steps_run: 6,
    elapsed: 1,
    final_score: 0.97,
    history: [],
    image: null,
    error: null,
    candidates: [
      { candidate: 0, final_score: 0.3, fate: "pruned", steps_run: 3, by_owner: true },
      { candidate: 1, final_score: 0.97, fate: "chosen", steps_run: 6, by_owner: true },
      { candidate: 2, final_score: 0.6, fate: "pruned", steps_run: 4, by_owner: true },
    ],
  });
  const done = candidateGrid(run);
  assert.equal(fateText(done.cells[1]), "kept by its owner");
  assert.equal(
    done.cells.some((cell) => cell.live),
    false,
  );
});

test("each candidate has a curve; a resampled one is joined to its parent", () => {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 6, cfg: 1, preview_size: 0 } });
  run.apply(check(2, 2, [c(0, 0.8), c(1, 0.2, "resampled", 0)]));
  run.apply(check(3, 4, [c(0, 0.85), c(1, 0.84)]));
  const curves = candidateCurves(run);
  assert.deepEqual(
    curves.map((curve) => curve.points),
    [
      [
        [2, 0.8],
        [4, 0.85],
      ],
      [
        [2, 0.2],
        [4, 0.84],
      ],
    ],
  );
  assert.deepEqual(curves[1].links, [
    [
      [2, 0.8],
      [4, 0.84],
    ],
  ]);
  assert.notEqual(curves[0].color, curves[1].color);
});
