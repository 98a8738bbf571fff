// The session rules of the protocol, sans I/O: the dashboard's mirror of the Python
// `stepwatch.protocol.session.ClientSession` (read its docstring; the two keep the same rules).
//
// Feed it every message the server sends (`receive`), tell it when a socket opens (`hello`)
// and when it drops (`connectionLost`), hand it every request (`send`); then take what to
// send (`dataToSend`, pairs of type and fields) and what happened (`eventsReceived`). It keeps:
//
// - `hello` first, resuming every run it follows from the last `seq` seen, at most
//   MAX_RESUME_RUNS (or what the last `welcome` announced); the rest as `subscribe` after
//   `welcome`;
// - replies matched to requests: `accepted`, `applied` and `error` by `request_id`,
//   `subscribed`, `unsubscribed` and an `unknown_run` error by `run_id`;
// - each followed run's last `seq`: an event at or below it is a duplicate;
// - a `stop` or `set` sent on a connection that dropped before its `applied` arrived is sent
//   again, with the same `request_id`, once its run's replay has not shown it.
//
// States: "connecting" → hello() → "awaiting_welcome" → welcome → "open";
// connectionLost() → "closed" → hello() → "awaiting_welcome" …
//
// Events are `{ kind, message }` with kind "welcome", "event" (a new run event),
// "duplicate", "error" (answering no request), "pong", "subscribed" (a resume point's),
// "unasked" (a reply nobody waits for); `{ kind: "answered", request, message }` for a reply
// to `request` ({ type, fields }); `{ kind: "lost", request }` for a start a drop lost.

import { FEATURES, RUN_EVENTS } from "./protocol.js";

export const MAX_RESUME_RUNS = 32;
const STEERING = new Set(["stop", "set"]);

export class ClientSession {
  constructor({ resumeLimit = MAX_RESUME_RUNS } = {}) {
    this.state = "connecting";
    this.welcome = null;
    this.connections = 0;
    this.resumeLimit = resumeLimit;
    this.outgoing = [];
    this.events = [];
    this.afterWelcome = [];
    this.followed = new Map(); // run id -> { lastSeq, replayUntil }
    this.endedRuns = new Set();
    this.starts = new Map(); // request id -> { request, connection }
    this.steers = new Map(); // request id -> { request, connection }
    this.subscribes = new Map(); // run id -> [request]
    this.unsubscribes = new Map(); // run id -> request
  }

  follows(runId) {
    return this.followed.has(runId) || this.subscribes.has(runId);
  }

  ended(runId) {
    return this.endedRuns.has(runId);
  }

  /** The highest seq seen of a followed run; null for a run it does not follow. */
  lastSeq(runId) {
    return this.followed.get(runId)?.lastSeq ?? null;
  }

  /** The after_seq a new subscribe should carry for a watcher that wants events after `afterSeq`. */
  replayFrom(runId, afterSeq) {
    const asked = (this.subscribes.get(runId) ?? []).map((request) => request.fields.after_seq);
    const seen = this.lastSeq(runId);
    return Math.min(afterSeq, ...asked, ...(seen === null ? [] : [seen]));
  }

  get maxResume() {
    const announced = this.welcome?.limits?.max_resume_runs ?? this.resumeLimit;
    return Math.min(announced, this.resumeLimit);
  }

  resumePoints() {
    const runIds = [...this.followed.keys()];
    for (const runId of this.subscribes.keys()) if (!this.followed.has(runId)) runIds.push(runId);
    return runIds.map((runId) => ({
      run_id: runId,
      after_seq: this.replayFrom(runId, Number.MAX_SAFE_INTEGER),
    }));
  }

  /** Say hello on a socket that just opened. */
  hello(client, token = null) {
    const points = this.resumePoints();
    const limit = this.maxResume;
    this.state = "connecting";
    this.afterWelcome = points.slice(limit);
    const resume = points.slice(0, limit);
    this.send("hello", { client, token: token ?? undefined, resume, features: FEATURES });
  }

  /** Send a message (any, in any state: the server judges); its reply comes as "answered". */
  send(type, fields = {}) {
    const request = { type, fields };
    if (type === "hello") {
      if (this.state === "connecting" || this.state === "closed") {
        this.state = "awaiting_welcome";
        this.connections += 1;
      }
    } else if (type === "start") {
      this.starts.set(fields.request_id, { request, connection: this.connections });
    } else if (STEERING.has(type)) {
      this.steers.set(fields.request_id, { request, connection: this.connections });
    } else if (type === "subscribe") {
      if (!this.subscribes.has(fields.run_id)) this.subscribes.set(fields.run_id, []);
      this.subscribes.get(fields.run_id).push(request);
    } else if (type === "unsubscribe") {
      this.unsubscribes.set(fields.run_id, request);
      this.followed.delete(fields.run_id);
    }
    this.outgoing.push(request);
  }

  /** Take one decoded message from the server. */
  receive(message) {
    if (RUN_EVENTS.has(message.type)) this.onEvent(message);
    else if (message.type === "welcome") this.onWelcome(message);
    else if (message.type === "accepted") this.onAccepted(message);
    else if (message.type === "subscribed") this.onSubscribed(message);
    else if (message.type === "unsubscribed") {
      const request = this.unsubscribes.get(message.run_id);
      this.unsubscribes.delete(message.run_id);
      this.events.push(request ? answered(request, message) : { kind: "unasked", message });
    } else if (message.type === "error") this.onError(message);
    else this.events.push({ kind: "pong", message });
  }

  connectionLost() {
    this.state = "closed";
    this.outgoing = [];
    this.afterWelcome = [];
    this.unsubscribes.clear();
    for (const followed of this.followed.values()) followed.replayUntil = null;
    for (const [requestId, { request, connection }] of this.starts) {
      if (connection !== this.connections) continue;
      this.starts.delete(requestId);
      this.events.push({ kind: "lost", request });
    }
  }

  dataToSend() {
    const requests = this.outgoing;
    this.outgoing = [];
    return requests;
  }

  eventsReceived() {
    const events = this.events;
    this.events = [];
    return events;
  }

  onWelcome(message) {
    if (this.state !== "awaiting_welcome") {
      this.events.push({ kind: "unasked", message });
      return;
    }
    this.state = "open";
    this.welcome = message;
    this.events.push({ kind: "welcome", message });
    for (const point of this.afterWelcome) this.send("subscribe", point);
    this.afterWelcome = [];
    // Steering of runs no replay will come for (they finished here) goes out again now.
    this.resend((runId) => !this.followed.has(runId));
  }

  onEvent(message) {
    const followed = this.followed.get(message.run_id);
    if (this.endedRuns.has(message.run_id) || (followed && message.seq <= followed.lastSeq)) {
      this.events.push({ kind: "duplicate", message });
    } else {
      if (followed) followed.lastSeq = message.seq;
      this.events.push({ kind: "event", message });
    }
    if (message.type === "applied" && this.steers.has(message.request_id)) {
      const { request } = this.steers.get(message.request_id);
      this.steers.delete(message.request_id);
      this.events.push(answered(request, message));
    }
    if (message.type === "finished") {
      this.endedRuns.add(message.run_id);
      this.followed.delete(message.run_id);
      this.resend((runId) => runId === message.run_id);
    } else if (followed) {
      this.replayReached(message.run_id, followed);
    }
  }

  onAccepted(message) {
    const found = this.starts.get(message.request_id);
    if (!found) {
      this.events.push({ kind: "unasked", message });
      return;
    }
    this.starts.delete(message.request_id);
    // The server subscribes the client that started a run.
    if (!this.followed.has(message.run_id)) {
      this.followed.set(message.run_id, { lastSeq: 0, replayUntil: null });
    }
    this.events.push(answered(found.request, message));
  }

  onSubscribed(message) {
    const runId = message.run_id;
    const asked = this.subscribes.get(runId) ?? [];
    this.subscribes.delete(runId);
    let followed = this.followed.get(runId);
    if (!followed && asked.length === 0) {
      this.events.push({ kind: "unasked", message });
      return;
    }
    const floor = Math.min(...asked.map((request) => request.fields.after_seq));
    if (!followed) {
      followed = { lastSeq: floor, replayUntil: null };
      this.followed.set(runId, followed);
    }
    // The replay comes from the lowest point asked; what it repeats is a duplicate.
    followed.lastSeq = Math.min(followed.lastSeq, floor);
    followed.replayUntil = message.last_seq;
    this.endedRuns.delete(runId);
    if (asked.length === 0) this.events.push({ kind: "subscribed", message });
    for (const request of asked) this.events.push(answered(request, message));
    this.replayReached(runId, followed);
  }

  onError(message) {
    if (message.request_id != null) {
      const found = this.starts.get(message.request_id) ?? this.steers.get(message.request_id);
      if (found) {
        this.starts.delete(message.request_id);
        this.steers.delete(message.request_id);
        this.events.push(answered(found.request, message));
        return;
      }
    } else if (message.code === "unknown_run" && message.run_id != null) {
      // A watch, or a resume point, of a run the server does not know (any more).
      this.followed.delete(message.run_id);
      const asked = this.subscribes.get(message.run_id) ?? [];
      this.subscribes.delete(message.run_id);
      const leaving = this.unsubscribes.get(message.run_id);
      this.unsubscribes.delete(message.run_id);
      for (const request of leaving ? [...asked, leaving] : asked) {
        this.events.push(answered(request, message));
      }
    }
    this.events.push({ kind: "error", message });
  }

  replayReached(runId, followed) {
    if (followed.replayUntil !== null && followed.lastSeq >= followed.replayUntil) {
      followed.replayUntil = null;
      this.resend((other) => other === runId);
    }
  }

  resend(select) {
    for (const steering of this.steers.values()) {
      if (steering.connection < this.connections && select(steering.request.fields.run_id)) {
        steering.connection = this.connections;
        this.outgoing.push(steering.request);
      }
    }
  }
}

function answered(request, message) {
  return { kind: "answered", request, message };
}
