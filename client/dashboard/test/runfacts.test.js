// The run page's words, as pure functions of a RunState (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  everySteps,
  parametersText,
  progressFacts,
  runTitle,
  startFieldsOf,
  steadyEta,
  stoppedText,
  tabTitle,
} from "../src/runfacts.js";
import { RunState } from "../src/runstate.js";

const fmt = (value) => (Number.isInteger(value) ? String(value) : value.toFixed(2));

const PARAMETERS = {
  model: "shapes",
  prompt: "red circle",
  negative_prompt: "",
  seed: 42,
  steps: 200,
  cfg: 3,
  sampler: "euler",
  scheduler: "karras",
  width: 32,
  height: 32,
  verifier: "adherence",
  check_interval: 1,
  quality_threshold: 0.6,
  scale_factor: 1.25,
  cfg_max: 6,
  early_stop: true,
  patience: 2,
  min_steps: 100,
  preview_size: 128,
  preview_format: "webp",
};

function running({ step, elapsed }) {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: PARAMETERS });
  run.apply({ type: "progress", seq: 2, step, total: 200, elapsed, eta: 1 });
  return run;
}

test("a check interval of one reads 'every step'", () => {
  assert.equal(everySteps(1), "every step");
  assert.equal(everySteps(5), "every 5 steps");
});

test("a queued run before its parameters are known is not a run of 'Step 0 of 1'", () => {
  const run = new RunState("r1");
  run.state = "queued";
  run.queuePosition = 1;
  assert.equal(runTitle(run), "Queued run");
  const facts = progressFacts(run, fmt);
  assert.equal(facts.text, "Queued: 1 run ahead");
  assert.doesNotMatch(facts.text, /Step|threshold|–/);
  run.knowParameters(PARAMETERS);
  assert.equal(runTitle(run), "red circle");
  assert.equal(run.state, "queued");
  assert.equal(run.threshold, 0.6);
  assert.equal(run.cfg, 3);
});

test("the time left follows the pace of the steps so far, the same for every viewer", () => {
  assert.equal(steadyEta(running({ step: 50, elapsed: 10 })), 30);
  // Progress a moment later at the same pace: the estimate moves smoothly, not by a minute.
  const later = steadyEta(running({ step: 60, elapsed: 12.1 }));
  assert.ok(Math.abs(later - 28.23) < 0.01, later);
  assert.equal(steadyEta(running({ step: 0, elapsed: 0 })), null);
  assert.match(progressFacts(running({ step: 50, elapsed: 10 }), fmt).text, /about 30 s left/);
});

test("the tab's title shows how far the run is, then how it ended", () => {
  const run = running({ step: 50, elapsed: 10 });
  assert.equal(tabTitle(run), "25% · red circle · stepwatch");
  run.apply({
    type: "finished",
    seq: 3,
    reason: "early_stop",
    steps_run: 120,
    elapsed: 20,
    final_score: 0.8,
    history: [],
    image: null,
    error: null,
  });
  assert.equal(tabTitle(run), "early stop · red circle · stepwatch");
});

test("a stop's acknowledgement says when the run has finished", () => {
  const run = running({ step: 50, elapsed: 10 });
  assert.match(stoppedText(50, run), /is finishing/);
  run.apply({
    type: "finished",
    seq: 3,
    reason: "stopped",
    steps_run: 53,
    elapsed: 11,
    final_score: 0.5,
    history: [],
    image: null,
    error: null,
  });
  assert.equal(
    stoppedText(50, run),
    "Stop applied at step 50; the run has finished after 53 steps.",
  );
});

test("parameters as text name every setting, and a re-run keeps the seed", () => {
  const text = parametersText({ ...PARAMETERS, negative_prompt: "blue" });
  const [prompt, negative, pairs] = text.split("\n");
  assert.equal(prompt, "red circle");
  assert.equal(negative, "Negative prompt: blue");
  assert.match(pairs, /^Steps: 200, Sampler: euler, Schedule type: karras, CFG scale: 3, Seed: 42/);
  assert.match(pairs, /Early stop: patience 2, from step 100$/);
  const fields = startFieldsOf(PARAMETERS);
  assert.equal(fields.seed, 42);
  assert.equal("preview_format" in fields, false);
});
