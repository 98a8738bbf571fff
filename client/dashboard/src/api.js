// The server's HTTP API (`/api/runs`, `/api/runs/{id}`, the run images), with the API token
// when the server needs one.

export class ApiError extends Error {
  constructor({ code, message, field }) {
    super(message);
    this.code = code;
    this.field = field ?? null;
  }
}

export class Api {
  /** `token()` returns the API token, or null when the server needs none. */
  constructor(token) {
    this.token = token;
  }

  headers() {
    const token = this.token();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async json(path, method = "GET") {
    let response;
    try {
      response = await fetch(path, { method, headers: this.headers() });
    } catch (error) {
      throw new ApiError({ code: "unreachable", message: "the server cannot be reached" });
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new ApiError(body?.error ?? { code: "internal", message: `HTTP ${response.status}` });
    }
    return response.json();
  }

  /** One page of stored runs, newest first: `{runs, next_before}`; `search`: words of the
   * prompt. */
  runs({ limit = 20, before = null, search = "" } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before !== null) query.set("before", String(before));
    if (search) query.set("q", search);
    return this.json(`/api/runs?${query}`);
  }

  /** The thumbnails the server kept of a run's checks: `{previews: [{step, url, ...}]}`. */
  previews(runId) {
    return this.json(`/api/runs/${encodeURIComponent(runId)}/previews`);
  }

  /** Delete a finished run from the server's history (its image and thumbnails too). */
  deleteRun(runId) {
    return this.json(`/api/runs/${encodeURIComponent(runId)}`, "DELETE");
  }

  /** A stored run: its summary, parameters and quality history. */
  run(runId) {
    return this.json(`/api/runs/${encodeURIComponent(runId)}`);
  }

  /**
   * A URL an <img> can show for `url`. Without a token that is `url` itself; with one the
   * image is fetched with the token (an <img> cannot send headers) and shown from memory.
   */
  async imageSource(url) {
    if (!this.token()) return url;
    const response = await fetch(url, { headers: this.headers() });
    if (!response.ok) throw new ApiError({ code: "unknown_run", message: "no image" });
    return URL.createObjectURL(await response.blob());
  }
}
