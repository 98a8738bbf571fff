// A RunState fed a late watcher's replay, then the thumbnails the server kept (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import { RunState } from "../src/runstate.js";
import { filmstripFrames, focusStep, frameAfterKey } from "../src/filmstrip.js";
import { cfgNoteText } from "../src/runfacts.js";

function check(seq, step, preview = null) {
  return {
    type: "check",
    seq,
    step,
    score: step / 100,
    components: {},
    threshold: 0.5,
    decision: "continue",
    reason: "",
    cfg: 3,
    preview,
  };
}

const LIVE = { format: "webp", width: 32, height: 32, data: new Uint8Array([1, 2, 3]) };

function replayed() {
  const run = new RunState("r1");
  run.apply({ type: "started", seq: 1, parameters: { steps: 100, preview_size: 128 } });
  // A replay collapses every preview but the latest.
  run.apply(check(2, 5));
  run.apply(check(3, 10));
  run.apply(check(4, 15, LIVE));
  return run;
}

test("a replay's collapsed previews are asked of the server once, and filled from it", () => {
  const run = replayed();
  assert.equal(run.wantsStoredPreviews, true);
  const kept = [5, 10, 15].map((step) => ({
    step,
    url: `/api/runs/r1/previews/${step}`,
    width: 32,
    height: 32,
  }));
  assert.equal(run.addStoredPreviews(kept), 2);
  assert.deepEqual(
    run.checks.map((c) => c.preview.stored ?? false),
    [true, true, false],
  );
  assert.equal(run.checks[0].preview.url, "/api/runs/r1/previews/5");
  assert.equal(run.wantsStoredPreviews, false);
  // A later check that arrives collapsed (a slow connection) asks again.
  run.apply(check(5, 20));
  assert.equal(run.wantsStoredPreviews, true);
  run.dispose();
});

test("a run without previews never asks for them and shows no filmstrip", () => {
  const run = new RunState("r2");
  run.apply({ type: "started", seq: 1, parameters: { steps: 10, preview_size: 0 } });
  run.apply(check(2, 5));
  assert.equal(run.wantsStoredPreviews, false);
  assert.equal(filmstripFrames(run), null);
});

test("the filmstrip is one Tab stop that the arrow keys move along", () => {
  const run = replayed();
  const frames = filmstripFrames(run);
  assert.deepEqual(
    frames.map((f) => f.step),
    [5, 10, 15],
  );
  assert.equal(focusStep(frames, null), 15);
  assert.equal(focusStep(frames, 10), 10);
  assert.equal(focusStep([], null), null);
  assert.equal(frameAfterKey(frames, 15, "ArrowLeft"), 10);
  assert.equal(frameAfterKey(frames, 15, "ArrowRight"), 15);
  assert.equal(frameAfterKey(frames, 10, "Home"), 5);
  assert.equal(frameAfterKey(frames, 5, "End"), 15);
  assert.equal(frameAfterKey(frames, 5, "Enter"), null);
  run.dispose();
});

test("the owner's CFG change pauses automatic CFG from its step, and the note says so", () => {
  const run = replayed();
  assert.equal(run.ownerCfgStep, null);
  assert.match(cfgNoteText(run.ownerCfgStep), /may raise CFG/);
  run.apply({
    type: "adjusted",
    seq: 5,
    step: 15,
    setting: "cfg",
    old: 3,
    new: 3.75,
    reason: "policy",
  });
  assert.equal(run.ownerCfgStep, null);
  run.apply({
    type: "applied",
    seq: 6,
    request_id: "q1",
    step: 17,
    stop: null,
    changes: [{ setting: "cfg", old: 3.75, new: 2.5 }],
  });
  assert.equal(run.ownerCfgStep, 17);
  assert.equal(run.cfg, 2.5);
  assert.match(cfgNoteText(run.ownerCfgStep), /Automatic CFG paused: you set CFG at step 17/);
});
