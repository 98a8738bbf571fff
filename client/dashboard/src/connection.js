// The dashboard's one WebSocket to the server: handshake, reconnection with resume, liveness.
//
// A Connection opens /ws on the page's own host, says `hello` and waits for `welcome`. When the
// socket drops it reconnects by itself, after a pause that grows with each failed try, and its
// `hello` asks to resume every unfinished run the page follows from the last `seq` it saw. The
// session rules (resume points, reply matching, de-duplication, resends) are the sans-I/O
// ClientSession's (session.js); this is its I/O shell. Every event of the session after
// `welcome` goes to `onMessage`; changes of the connection's state go to `onStatus`.

import { CLIENT_NAME, SUBPROTOCOL, decodeFrame, encodeFrame } from "./protocol.js";
import { ClientSession } from "./session.js";

const RETRY_DELAYS_S = [0.5, 1, 2, 4, 8, 10];
const PING_EVERY_MS = 15_000;
// A browser may not notice a dead TCP connection for minutes; an unanswered ping is the sign.
const PONG_WAIT_MS = 10_000;

/**
 * States: "connecting" (socket opening or hello sent), "open" (welcome received),
 * "waiting" (disconnected, a retry is scheduled at `retryAt`), "needs-token" (the server
 * refused the API token; `connect()` again after `setToken`).
 */
export class Connection {
  constructor({ url, token = null, onMessage, onStatus }) {
    this.url = url;
    this.token = token;
    this.session = new ClientSession();
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.state = "connecting";
    this.welcome = null;
    this.failures = 0;
    this.retryAt = null;
    this.lastError = null;
    this.socket = null;
    this.timers = { retry: null, ping: null, pong: null };
    this.nonce = 0;
  }

  /** Open the socket now (cancelling a scheduled retry). */
  connect() {
    this.clearTimers();
    this.closeSocket();
    this.setState("connecting");
    let socket;
    try {
      socket = new WebSocket(this.url, [SUBPROTOCOL]);
    } catch (error) {
      this.lastError = String(error);
      this.scheduleRetry();
      return;
    }
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      this.session.hello(CLIENT_NAME, this.token);
      this.flush(socket);
    };
    socket.onmessage = (event) => this.receive(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event);
    this.socket = socket;
  }

  setToken(token) {
    this.token = token || null;
  }

  /** Send a message; false when the connection is not open (nothing is queued). */
  send(type, fields) {
    if (this.state !== "open" || this.socket.readyState !== WebSocket.OPEN) return false;
    this.session.send(type, fields);
    this.flush(this.socket);
    return true;
  }

  get isOpen() {
    return this.state === "open";
  }

  flush(socket) {
    const requests = this.session.dataToSend();
    if (socket.readyState !== WebSocket.OPEN) return;
    for (const { type, fields } of requests) socket.send(encodeFrame(type, fields));
  }

  receive(socket, data) {
    if (socket !== this.socket) return;
    if (typeof data === "string") return;
    let message;
    try {
      message = decodeFrame(data);
    } catch (error) {
      this.lastError = error.message;
      socket.close(1002, "undecodable frame");
      return;
    }
    this.alive();
    this.session.receive(message);
    for (const event of this.session.eventsReceived()) this.happened(event);
    this.flush(socket);
  }

  happened(event) {
    const message = event.message;
    if (event.kind === "welcome") {
      this.welcome = message;
      this.failures = 0;
      this.lastError = null;
      this.setState("open");
      return;
    }
    if (event.kind === "error" && message.code === "unauthorized") {
      this.lastError = message.message;
      this.setState("needs-token");
    }
    if (event.kind !== "pong") this.onMessage(event);
  }

  lost() {
    this.session.connectionLost();
    for (const event of this.session.eventsReceived()) this.onMessage(event);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.clearTimers();
    this.lost();
    if (this.state === "needs-token") return;
    if (!this.lastError && event.code !== 1000) {
      this.lastError = event.reason || `connection closed (code ${event.code})`;
    }
    this.scheduleRetry();
  }

  scheduleRetry() {
    const delay = RETRY_DELAYS_S[Math.min(this.failures, RETRY_DELAYS_S.length - 1)];
    this.failures += 1;
    this.retryAt = Date.now() + delay * 1000;
    this.timers.retry = setTimeout(() => this.connect(), delay * 1000);
    this.setState("waiting");
  }

  // Any frame proves the connection alive; a ping goes out after a quiet spell.
  alive() {
    clearTimeout(this.timers.pong);
    clearTimeout(this.timers.ping);
    this.timers.pong = null;
    this.timers.ping = setTimeout(() => this.ping(), PING_EVERY_MS);
  }

  ping() {
    this.nonce += 1;
    if (!this.send("ping", { nonce: this.nonce })) return;
    this.timers.pong = setTimeout(() => {
      this.lastError = "the server stopped answering";
      this.socket?.close(4000, "no pong");
    }, PONG_WAIT_MS);
  }

  clearTimers() {
    for (const name of Object.keys(this.timers)) {
      clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
  }

  closeSocket() {
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    this.lost();
    if (socket.readyState <= WebSocket.OPEN) socket.close(1000, "reconnecting");
  }

  setState(state) {
    this.state = state;
    this.onStatus(this);
  }
}

/** The WebSocket URL of the server that served this page. */
export function serverSocketUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}
