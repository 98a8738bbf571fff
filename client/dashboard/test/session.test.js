// The dashboard's session state machine without a socket: hello, matching, duplicates,
// resume and resends, the same rules as tests/protocol/test_protocol_session.py (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";
import { ClientSession, MAX_RESUME_RUNS } from "../src/session.js";
import { FEATURES } from "../src/protocol.js";

const RUN = "r-1";
const OTHER = "r-2";
const WELCOME = { type: "welcome", server: "stepwatch/test", limits: {} };

function progress(seq, runId = RUN) {
  return { type: "progress", run_id: runId, seq, step: seq, total: 30 };
}

function finished(seq, runId = RUN) {
  return { type: "finished", run_id: runId, seq, reason: "stopped" };
}

function applied(seq, requestId, runId = RUN) {
  return { type: "applied", run_id: runId, seq, request_id: requestId, step: seq };
}

function feed(session, ...messages) {
  for (const message of messages) session.receive(message);
  return session.eventsReceived();
}

function kinds(events) {
  return events.map(({ kind, message }) => [kind, message?.type, message?.seq]);
}

function opened() {
  const session = new ClientSession();
  session.hello("tests/1");
  session.dataToSend();
  feed(session, WELCOME);
  return session;
}

function startedRun(session, requestId = "q1", runId = RUN) {
  session.send("start", { request_id: requestId, prompt: "red circle" });
  session.dataToSend();
  feed(session, { type: "accepted", request_id: requestId, run_id: runId, queue_position: 0 });
}

function steeredThenDropped(type) {
  const session = opened();
  startedRun(session);
  feed(session, progress(1), progress(2));
  session.send(type, { request_id: "q2", run_id: RUN, token: "t" });
  session.dataToSend();
  session.connectionLost();
  session.hello("tests/1");
  session.dataToSend();
  feed(session, WELCOME);
  assert.deepEqual(session.dataToSend(), []);
  return session;
}

test("hello comes first and welcome opens", () => {
  const session = new ClientSession();
  assert.equal(session.state, "connecting");
  session.hello("tests/1", "secret");
  assert.equal(session.state, "awaiting_welcome");
  assert.deepEqual(session.dataToSend(), [
    {
      type: "hello",
      fields: { client: "tests/1", token: "secret", resume: [], features: FEATURES },
    },
  ]);
  assert.deepEqual(kinds(feed(session, WELCOME)), [["welcome", "welcome", undefined]]);
  assert.equal(session.state, "open");
  assert.equal(session.welcome, WELCOME);
  assert.deepEqual(kinds(feed(session, WELCOME)), [["unasked", "welcome", undefined]]);
});

test("a start is answered by accepted, and its run is followed from then on", () => {
  const session = opened();
  session.send("start", { request_id: "q1", prompt: "red circle" });
  const accepted = { type: "accepted", request_id: "q1", run_id: RUN, queue_position: 0 };
  const [answer] = feed(session, accepted);
  assert.equal(answer.kind, "answered");
  assert.equal(answer.request.fields.request_id, "q1");
  assert.equal(answer.message, accepted);
  assert.ok(session.follows(RUN));
  assert.equal(session.lastSeq(RUN), 0);
  const stray = { type: "accepted", request_id: "q9", run_id: OTHER };
  assert.deepEqual(kinds(feed(session, stray)), [["unasked", "accepted", undefined]]);
});

test("errors answer their request by request id; others are reported as they are", () => {
  const session = opened();
  session.send("stop", { request_id: "q2", run_id: RUN, token: "t" });
  const forbidden = { type: "error", code: "forbidden", request_id: "q2", run_id: RUN };
  const limited = { type: "error", code: "rate_limited" };
  const events = feed(session, forbidden, limited, { type: "pong", nonce: 1 });
  assert.deepEqual(
    events.map((event) => event.kind),
    ["answered", "error", "pong"],
  );
  assert.equal(events[0].request.type, "stop");
});

test("repeated events are duplicates; a finished run's later events too", () => {
  const session = opened();
  startedRun(session);
  assert.deepEqual(kinds(feed(session, progress(1), progress(2), progress(2))), [
    ["event", "progress", 1],
    ["event", "progress", 2],
    ["duplicate", "progress", 2],
  ]);
  assert.deepEqual(kinds(feed(session, progress(5, OTHER))), [["event", "progress", 5]]);
  feed(session, finished(3));
  assert.ok(session.ended(RUN));
  assert.ok(!session.follows(RUN));
  assert.deepEqual(kinds(feed(session, progress(3))), [["duplicate", "progress", 3]]);
});

test("a watch is answered by subscribed and replays from the lowest point asked", () => {
  const session = opened();
  startedRun(session);
  feed(session, progress(1), progress(2), progress(3));
  assert.equal(session.replayFrom(RUN, 10), 3);
  session.send("subscribe", { run_id: RUN, after_seq: 1 });
  assert.equal(session.replayFrom(RUN, 2), 1);
  const subscribed = { type: "subscribed", run_id: RUN, state: "running", last_seq: 3 };
  assert.deepEqual(kinds(feed(session, subscribed)), [["answered", "subscribed", undefined]]);
  assert.deepEqual(kinds(feed(session, progress(2))), [["event", "progress", 2]]);
  const unasked = { type: "subscribed", run_id: OTHER, state: "running", last_seq: 1 };
  assert.deepEqual(kinds(feed(session, unasked)), [["unasked", "subscribed", undefined]]);
});

test("unknown_run answers the watches of the run and forgets it", () => {
  const session = opened();
  session.send("subscribe", { run_id: RUN, after_seq: 0 });
  session.send("unsubscribe", { run_id: RUN });
  const unknown = { type: "error", code: "unknown_run", run_id: RUN };
  assert.deepEqual(
    feed(session, unknown).map((event) => [event.kind, event.request?.type]),
    [
      ["answered", "subscribe"],
      ["answered", "unsubscribe"],
      ["error", undefined],
    ],
  );
  assert.ok(!session.follows(RUN));
  assert.deepEqual(kinds(feed(session, { type: "unsubscribed", run_id: RUN })), [
    ["unasked", "unsubscribed", undefined],
  ]);
  session.send("unsubscribe", { run_id: RUN });
  assert.deepEqual(kinds(feed(session, { type: "unsubscribed", run_id: RUN })), [
    ["answered", "unsubscribed", undefined],
  ]);
});

test("a drop loses the unanswered start and the frames not sent", () => {
  const session = opened();
  session.send("start", { request_id: "q1", prompt: "red circle" });
  session.connectionLost();
  assert.equal(session.state, "closed");
  assert.deepEqual(session.dataToSend(), []);
  const [lost] = session.eventsReceived();
  assert.equal(lost.kind, "lost");
  assert.equal(lost.request.fields.request_id, "q1");
});

test("a reconnect resumes every followed run from its last seq", () => {
  const session = opened();
  startedRun(session);
  feed(session, progress(1), progress(2));
  session.send("subscribe", { run_id: OTHER, after_seq: 5 });
  session.connectionLost();
  session.hello("tests/1");
  assert.equal(session.connections, 2);
  assert.deepEqual(session.dataToSend()[0].fields.resume, [
    { run_id: RUN, after_seq: 2 },
    { run_id: OTHER, after_seq: 5 },
  ]);
  feed(session, WELCOME);
  const resumed = { type: "subscribed", run_id: RUN, state: "running", last_seq: 3 };
  assert.deepEqual(kinds(feed(session, resumed, progress(2), progress(3))), [
    ["subscribed", "subscribed", undefined],
    ["duplicate", "progress", 2],
    ["event", "progress", 3],
  ]);
});

test("resume points beyond the limit go out as subscribe after welcome", () => {
  assert.equal(new ClientSession().maxResume, MAX_RESUME_RUNS);
  const session = new ClientSession({ resumeLimit: 3 });
  session.hello("tests/1");
  feed(session, { ...WELCOME, limits: { max_resume_runs: 2 } });
  assert.equal(session.maxResume, 2);
  for (const index of [0, 1, 2]) startedRun(session, `q${index}`, `r-${index}`);
  session.connectionLost();
  session.hello("tests/1");
  assert.deepEqual(
    session.dataToSend()[0].fields.resume.map((point) => point.run_id),
    ["r-0", "r-1"],
  );
  feed(session, WELCOME);
  assert.deepEqual(session.dataToSend(), [
    { type: "subscribe", fields: { run_id: "r-2", after_seq: 0 } },
  ]);
});

test("a steer lost in a drop is resent once the replay has not shown it", () => {
  const session = steeredThenDropped("stop");
  feed(session, { type: "subscribed", run_id: RUN, state: "running", last_seq: 4 }, progress(3));
  assert.deepEqual(session.dataToSend(), []);
  feed(session, progress(4));
  const resent = session.dataToSend();
  assert.deepEqual(
    resent.map((request) => [request.type, request.fields.request_id]),
    [["stop", "q2"]],
  );
  const events = feed(session, applied(5, "q2"));
  assert.deepEqual(
    events.map((event) => event.kind),
    ["event", "answered"],
  );
  feed(session, progress(6));
  assert.deepEqual(session.dataToSend(), []);
});

test("a steer the replay shows is not resent", () => {
  const session = steeredThenDropped("set");
  const subscribed = { type: "subscribed", run_id: RUN, state: "running", last_seq: 3 };
  const events = feed(session, subscribed, applied(3, "q2"));
  assert.equal(events.at(-1).kind, "answered");
  assert.deepEqual(session.dataToSend(), []);
});

test("a steer of a run that finished is resent: at welcome, or when the replay ends it", () => {
  const replayed = steeredThenDropped("stop");
  feed(replayed, { type: "subscribed", run_id: RUN, state: "finished", last_seq: 3 }, finished(3));
  assert.equal(replayed.dataToSend().length, 1);

  const session = opened();
  startedRun(session);
  feed(session, finished(2));
  session.send("stop", { request_id: "q2", run_id: RUN, token: "t" });
  session.connectionLost();
  session.hello("tests/1");
  session.dataToSend();
  feed(session, WELCOME);
  assert.deepEqual(
    session.dataToSend().map((request) => request.type),
    ["stop"],
  );
});
