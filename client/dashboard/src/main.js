// The dashboard: one connection, the runs this page watches, and two pages chosen by the URL's
// hash: `#/` (start a run, the live runs, the history) and `#/runs/<run id>` (one run, live).

import "./styles.css";
import { Api } from "./api.js";
import { Connection, serverSocketUrl } from "./connection.js";
import { fill, h, seconds, showNotice } from "./dom.js";
import { renderHome } from "./home.js";
import { describeError, nextRequestId } from "./protocol.js";
import { renderRun } from "./runview.js";
import { RunState } from "./runstate.js";

const API_TOKEN_KEY = "stepwatch.apiToken";
const CONTROL_TOKEN_PREFIX = "stepwatch.control.";
// The requests answered by request id; their callbacks wait in `replies`.
const REQUESTS = new Set(["start", "stop", "set"]);

/** Everything the pages share. Pages get it as their `app` and never touch the socket. */
class App {
  constructor(root) {
    this.root = root;
    this.runs = new Map(); // run id -> RunState, for every run this page watches
    this.runListeners = new Map(); // run id -> Set of functions(run, message)
    this.replies = new Map(); // request id -> function(reply)
    this.statusListeners = new Set();
    this.api = new Api(() => localStorage.getItem(API_TOKEN_KEY));
    this.connection = new Connection({
      url: serverSocketUrl(window.location),
      token: localStorage.getItem(API_TOKEN_KEY),
      onMessage: (event) => this.dispatch(event),
      onStatus: () => this.statusChanged(),
    });
    this.page = null;
  }

  get welcome() {
    return this.connection.welcome;
  }

  /** Send a request (`start`, `stop`, `set`) with a fresh request id; `onReply` gets its answer. */
  request(type, fields, onReply) {
    const requestId = nextRequestId(type);
    if (!this.connection.send(type, { request_id: requestId, ...fields })) return null;
    this.replies.set(requestId, onReply);
    return requestId;
  }

  /** Start watching a run (replayed from its first event) and return its RunState. */
  watch(runId) {
    let run = this.runs.get(runId);
    if (!run) {
      run = new RunState(runId);
      run.needsSubscribe = true;
      this.runs.set(runId, run);
      this.flushSubscriptions();
    }
    return run;
  }

  /** Stop watching a run unless this page owns it (owned runs stay watched while it runs). */
  unwatch(runId) {
    const run = this.runs.get(runId);
    if (!run || (this.controlToken(runId) && run.state !== "finished")) return;
    if (run.state !== "finished") this.connection.send("unsubscribe", { run_id: runId });
    run.dispose();
    this.runs.delete(runId);
  }

  onRun(runId, listener) {
    if (!this.runListeners.has(runId)) this.runListeners.set(runId, new Set());
    this.runListeners.get(runId).add(listener);
    return () => this.runListeners.get(runId)?.delete(listener);
  }

  onStatus(listener) {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  // Control tokens live in localStorage: they survive a reload, every tab of this browser
  // steers the runs it started, and a link to the run opened in another browser is a
  // read-only watcher. A finished run's token is forgotten.
  controlToken(runId) {
    return localStorage.getItem(CONTROL_TOKEN_PREFIX + runId);
  }

  keepControlToken(runId, token) {
    localStorage.setItem(CONTROL_TOKEN_PREFIX + runId, token);
  }

  forgetControlToken(runId) {
    localStorage.removeItem(CONTROL_TOKEN_PREFIX + runId);
  }

  /** The run owned by this page after `accepted`: watched already (the server subscribed us). */
  adoptRun(accepted) {
    this.keepControlToken(accepted.run_id, accepted.control_token);
    const run = this.runs.get(accepted.run_id) ?? new RunState(accepted.run_id);
    run.queuePosition = accepted.queue_position;
    if (run.state === "unknown") run.state = accepted.queue_position > 0 ? "queued" : "running";
    this.runs.set(accepted.run_id, run);
    return run;
  }

  setApiToken(token) {
    localStorage.setItem(API_TOKEN_KEY, token);
    this.connection.setToken(token);
    this.connection.connect();
  }

  // Runs watched while the connection was down are subscribed once it is open; the runs the
  // session already follows it resumes itself in its hello.
  flushSubscriptions() {
    if (!this.connection.isOpen) return;
    const session = this.connection.session;
    for (const run of this.runs.values()) {
      if (!run.needsSubscribe) continue;
      run.needsSubscribe = false;
      const afterSeq = session.replayFrom(run.runId, run.lastSeq);
      this.connection.send("subscribe", { run_id: run.runId, after_seq: afterSeq });
    }
  }

  /** One event of the connection's session (see session.js for the kinds). */
  dispatch({ kind, message, request }) {
    const run = message?.run_id ? this.runs.get(message.run_id) : undefined;
    if (kind === "event") {
      if (run && run.apply(message)) this.tell(run, message);
      if (message.type === "finished") this.forgetControlToken(message.run_id);
    } else if (kind === "answered" && REQUESTS.has(request.type)) {
      const reply = this.replies.get(request.fields.request_id);
      this.replies.delete(request.fields.request_id);
      reply?.(message);
    } else if ((kind === "answered" || kind === "subscribed") && message.type === "subscribed") {
      if (!run) return;
      if (run.state !== "finished") run.state = message.state;
      this.tell(run, message);
    } else if (kind === "error" && run) {
      if (message.code === "unknown_run") run.missing = true;
      this.tell(run, message);
    } else if (kind === "error") {
      showNotice(describeError(message));
    }
  }

  tell(run, message) {
    for (const listener of this.runListeners.get(run.runId) ?? []) listener(run, message);
  }

  statusChanged() {
    renderConnectionStatus(this);
    if (this.connection.isOpen) this.flushSubscriptions();
    for (const listener of this.statusListeners) listener(this.connection);
  }

  route() {
    this.page?.dispose();
    const match = window.location.hash.match(/^#\/runs\/([^/?#]+)/);
    const query = new URLSearchParams(window.location.hash.split("?")[1] ?? "");
    const main = fill(this.root);
    this.page = match
      ? renderRun(main, this, decodeURIComponent(match[1]))
      : renderHome(main, this, { rerun: query.get("rerun") });
    // A new page starts at its top (the hash changes within one document, which keeps the
    // scroll position of the page before).
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
  }

  start() {
    window.addEventListener("hashchange", () => this.route());
    this.connection.connect();
    this.route();
    setInterval(() => renderConnectionStatus(this), 1000);
  }
}

/** The header's connection line: quiet when connected, plain words when not. */
function renderConnectionStatus(app) {
  const box = document.getElementById("connection");
  const connection = app.connection;
  box.dataset.state = connection.state;
  if (connection.state === "open") {
    fill(box, h("span", { class: "dot" }), "Connected");
  } else if (connection.state === "connecting") {
    fill(box, h("span", { class: "dot" }), "Connecting…");
  } else if (connection.state === "waiting") {
    const left = Math.max(0, (connection.retryAt - Date.now()) / 1000);
    fill(
      box,
      h("span", { class: "dot" }),
      h("strong", {}, "Disconnected from the server. "),
      `Reconnecting in ${seconds(left)}`,
      connection.lastError ? ` (${connection.lastError})` : "",
      ". ",
      h(
        "button",
        { type: "button", class: "link", onclick: () => connection.connect() },
        "Retry now",
      ),
    );
  } else if (connection.state === "needs-token") {
    renderTokenForm(box, app);
  }
}

function renderTokenForm(box, app) {
  if (box.querySelector("form")) return;
  const input = h("input", {
    id: "api-token",
    type: "password",
    autocomplete: "off",
    required: true,
  });
  fill(
    box,
    h("span", { class: "dot" }),
    h(
      "form",
      {
        class: "token-form",
        onsubmit: (event) => {
          event.preventDefault();
          app.setApiToken(input.value);
        },
      },
      h("label", { for: "api-token" }, "This server needs an API token:"),
      input,
      h("button", { type: "submit" }, "Connect"),
    ),
  );
}

new App(document.getElementById("page")).start();
