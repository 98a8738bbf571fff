// The stepwatch wire protocol, version 1, as the dashboard speaks it (see protocol/README.md):
// one msgpack map per binary WebSocket message, with `type` and `v` beside the fields.

import { decode, encode } from "@msgpack/msgpack";

export const SUBPROTOCOL = "stepwatch.v1";
export const VERSION = 1;
export const CLIENT_NAME = "stepwatch-dashboard/0.1";

/**
 * The fields added to version 1 after its first release that the dashboard reads, as
 * `hello.features` names them: the server leaves the others out of its frames. The same list
 * as `stepwatch.protocol.ADDED_SERVER_FIELDS` (a test holds them together).
 */
export const FEATURES = [
  "applied_step",
  "by_owner",
  "candidate_kept",
  "candidate_stopped",
  "candidates",
  "check_step",
  "checks",
  "compute",
  "control_image",
  "control_scale",
  "image",
  "images",
  "keep_top",
  "mask",
  "preview_decoder",
  "preview_decoders",
  "prune_steps",
  "search",
  "search_changes",
  "strength",
];

/** The run events: they carry `run_id` and `seq`, and every watcher of the run sees them. */
export const RUN_EVENTS = new Set([
  "started",
  "progress",
  "check",
  "adjusted",
  "applied",
  "finished",
]);

/**
 * The bytes of one client frame. Fields left `undefined` are left out, so the server applies
 * its default; `null` is sent as nil ("the server's default" where the field allows nil).
 */
export function encodeFrame(type, fields = {}) {
  const frame = { type, v: VERSION };
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined) frame[name] = value;
  }
  return encode(frame);
}

/** The message in one server frame (an object with `type`), or an Error for anything else. */
export function decodeFrame(data) {
  const frame = decode(new Uint8Array(data));
  if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
    throw new Error("the server sent a frame that is not a stepwatch message");
  }
  return frame;
}

// What each error code means for the person in front of the dashboard. The server's own
// message goes beside it: these say what happened, the message says to what.
const ERROR_TEXT = {
  frame_too_large: "The message was too large for the server.",
  malformed_frame: "The server could not read a message from this page.",
  invalid_message: "The server refused a message whose fields contradict each other.",
  unknown_type: "The server does not know a message this page sent.",
  unknown_field: "The server does not know a field this page sent.",
  missing_field: "A required value is missing.",
  invalid_value: "A value is not allowed.",
  unsupported_version: "This dashboard speaks a protocol version the server does not.",
  hello_required: "The connection was not opened properly; reconnecting.",
  unexpected_message: "The server did not expect that message now.",
  unauthorized: "This server needs an API token.",
  forbidden: "Only the run's owner can steer it, and this page does not hold its control token.",
  unknown_run: "The server does not know this run (it may have been forgotten).",
  unknown_model: "The server does not serve this model.",
  unknown_verifier: "The server has no verifier by this name.",
  unknown_sampler: "The model does not offer this sampler.",
  unknown_scheduler: "The model does not offer this noise schedule.",
  invalid_prompt: "The model cannot read this prompt.",
  queue_full: "The server's queue is full. Try again in a little while.",
  rate_limited: "This page sent too much too fast, and the server dropped a message.",
  too_many_runs: "This page already runs as many runs as the server allows. Wait for one to end.",
  run_finished: "The run has already finished.",
  slow_consumer: "The connection fell behind and the server closed it; reconnecting.",
  shutting_down: "The server is shutting down and takes no new runs.",
  internal: "Something went wrong inside the server.",
  store_failed: "The server cannot store results now; no run is started until it can.",
  nan_detected: "The model produced invalid numbers (NaN or infinity).",
  verifier_failed: "The verifier failed to score the image.",
  out_of_memory: "The server ran out of memory for this run.",
  unsupported_scheduler: "The server cannot watch a run with this scheduler.",
  unknown_upload: "The server does not hold this input image; upload it again.",
  invalid_upload: "The input image cannot be used (its format, its contents or its size).",
  upload_too_large: "The input image is too large for the server.",
};

/** A coded error as people read it: `{code, summary, detail, field}`. */
export function describeError({ code, message, field }) {
  const summary = ERROR_TEXT[code] ?? `The server reported an error (${code}).`;
  const detail = message && message !== summary ? message : "";
  return { code, summary, detail, field: field ?? null };
}

/** Every code this dashboard has a sentence for (the tests check it against the protocol). */
export const KNOWN_ERROR_CODES = Object.keys(ERROR_TEXT);

let counter = 0;

/** A request id unique within this page: `start`, `stop` and `set` replies are matched by it. */
export function nextRequestId(kind) {
  counter += 1;
  return `${kind}-${Date.now().toString(36)}-${counter}`;
}
