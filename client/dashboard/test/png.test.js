// The parameters written into a PNG as text chunks (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync } from "node:zlib";
import { crc32, textChunks, withTextChunks } from "../src/png.js";

test("the CRC is the one PNG's chunks carry", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new TextEncoder().encode("IEND")), 0xae426082);
});

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])));
  return Buffer.concat([head, data, crc]);
}

/** A 1×1 grey PNG. */
function tinyPng() {
  const header = Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
  return new Uint8Array(
    Buffer.concat([
      Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
      chunk("IHDR", header),
      chunk("IDAT", deflateSync(Buffer.from([0, 128]))),
      chunk("IEND", Buffer.alloc(0)),
    ]),
  );
}

test("text chunks go after the header with valid CRCs, and read back", () => {
  const tagged = withTextChunks(tinyPng(), [
    ["parameters", "red circle\nSteps: 30, Seed: 7"],
    ["stepwatch", '{"prompt": "grüner Kreis ★"}'],
  ]);
  assert.deepEqual(textChunks(tagged), {
    parameters: "red circle\nSteps: 30, Seed: 7",
    stepwatch: '{"prompt": "grüner Kreis ★"}',
  });
  // Every chunk's CRC is right, and the header still comes first.
  const types = [];
  for (let at = 8; at < tagged.length;) {
    const view = Buffer.from(tagged.buffer, tagged.byteOffset, tagged.length);
    const length = view.readUInt32BE(at);
    const body = view.subarray(at + 4, at + 8 + length);
    assert.equal(view.readUInt32BE(at + 8 + length), crc32(body));
    types.push(body.subarray(0, 4).toString("latin1"));
    at += 12 + length;
  }
  assert.deepEqual(types, ["IHDR", "tEXt", "iTXt", "IDAT", "IEND"]);
});

test("anything but a PNG is refused", () => {
  assert.throws(() => withTextChunks(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]), []), /not a PNG/);
});
