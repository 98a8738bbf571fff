// The run page's input images, as a pure function of a run's parameters (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import { inputImages } from "../src/runinputs.js";

test("a run's input images are listed by role, in start's order, with their URLs", () => {
  const id = "ab".repeat(32);
  const other = "cd".repeat(32);
  assert.deepEqual(inputImages({ mask: other, image: id, strength: 1 }), [
    { role: "image", label: "Init image", id, url: `/api/uploads/${id}` },
    { role: "mask", label: "Mask", id: other, url: `/api/uploads/${other}` },
  ]);
});

test("a run without input images, or whose parameters are not known yet, lists none", () => {
  assert.deepEqual(inputImages({ prompt: "red circle", image: null }), []);
  assert.deepEqual(inputImages(null), []);
});
