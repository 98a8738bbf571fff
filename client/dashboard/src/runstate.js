// What the dashboard knows about one run, built from its events in `seq` order.
//
// A RunState is fed the run's events (live, replayed after a reconnect, or replayed to a late
// watcher) and ignores any it has already seen. It can also be built from the HTTP API's
// record of a stored run. A replay collapses the previews of all checks but the latest; the
// thumbnails the server keeps of every check (`GET /api/runs/{id}/previews`) fill them in.
// Views read it and never change it.

export class RunState {
  constructor(runId) {
    this.runId = runId;
    this.lastSeq = 0;
    this.state = "unknown"; // "queued", "running" or "finished"; "unknown" until told
    this.queuePosition = null;
    this.parameters = null;
    this.step = 0;
    this.total = null;
    this.elapsed = 0;
    this.eta = null;
    this.checks = []; // {step, score, components, threshold, decision, reason, cfg, preview}
    this.changes = []; // {step, kind: "adjusted"|"applied", setting, old, new, reason, requestId}
    this.stops = []; // {step, mode, requestId}
    this.ownerCandidates = []; // a search's owner's stops and keeps: {step, candidate, action}
    this.finished = null; // {reason, stepsRun, elapsed, finalScore, error}
    this.image = null; // {url, width, height}
    this.objectUrls = [];
    this.storedPreviewsAsked = 0; // how many checks there were when stored previews were asked
  }

  /** Apply one run event; false when it was already seen (a replay overlapping the live feed). */
  apply(event) {
    if (event.seq <= this.lastSeq) return false;
    this.lastSeq = event.seq;
    switch (event.type) {
      case "started":
        this.started(event.parameters);
        break;
      case "progress":
        if (this.state !== "finished") this.state = "running";
        this.step = event.step;
        this.total = event.total;
        this.elapsed = event.elapsed;
        this.eta = event.eta;
        break;
      case "check":
        this.check(event);
        break;
      case "adjusted":
        this.changes.push({ ...change(event, "adjusted"), reason: event.reason, seq: event.seq });
        break;
      case "applied":
        this.applied(event);
        break;
      case "finished":
        this.finish(event);
        break;
      default:
        return false;
    }
    return true;
  }

  started(parameters) {
    this.parameters = parameters;
    this.total = parameters.steps;
    if (this.state !== "finished") this.state = "running";
  }

  /** The parameters the server stored for a run that has not started yet (no state change). */
  knowParameters(parameters) {
    if (this.parameters) return;
    this.parameters = parameters;
    this.total ??= parameters.steps;
  }

  check(event) {
    this.step = Math.max(this.step, event.step);
    this.checks.push({
      seq: event.seq,
      step: event.step,
      score: event.score,
      components: event.components,
      threshold: event.threshold,
      decision: event.decision,
      reason: event.reason,
      cfg: event.cfg,
      preview: event.preview ? this.blobImage(event.preview) : null,
      // A search's candidates at this check (none for a single run).
      candidates: (event.candidates ?? []).map((c) => ({
        candidate: c.candidate,
        score: c.score,
        fate: c.fate,
        parent: c.parent ?? null,
        preview: c.preview ? this.blobImage(c.preview) : null,
      })),
    });
  }

  applied(event) {
    const candidate = event.candidate_stopped ?? event.candidate_kept;
    if (candidate !== undefined && candidate !== null) {
      const action = event.candidate_kept === candidate ? "keep" : "stop";
      this.ownerCandidates.push({ step: event.step, candidate, action });
      return;
    }
    if (event.stop) {
      this.stops.push({
        step: event.step,
        mode: event.stop,
        requestId: event.request_id,
        seq: event.seq,
      });
      return;
    }
    for (const item of [...event.changes, ...(event.search_changes ?? [])]) {
      this.changes.push({
        ...change({ ...event, ...item }, "applied"),
        requestId: event.request_id,
        seq: event.seq,
      });
    }
  }

  finish(event) {
    this.state = "finished";
    this.step = Math.max(this.step, event.steps_run);
    this.elapsed = event.elapsed;
    this.eta = null;
    this.finished = {
      seq: event.seq,
      reason: event.reason,
      stepsRun: event.steps_run,
      elapsed: event.elapsed,
      finalScore: event.final_score,
      error: event.error,
      candidates: event.candidates ?? [],
      compute: event.compute ?? null,
    };
    if (event.image) this.image = this.blobImage({ ...event.image, format: "png" });
    // A late watcher may have missed checks whose events it never saw (never in v1, but the
    // history is the record): take any check the history has and the events did not.
    const seen = new Set(this.checks.map((c) => c.step));
    for (const entry of event.history) {
      if (!seen.has(entry.step)) this.checks.push({ ...entry, reason: "", preview: null });
    }
    this.checks.sort((a, b) => a.step - b.step);
  }

  /** The value of `setting` in force after `step` steps: its start value, then each change. */
  valueAt(setting, step) {
    let value = this.parameters ? this.parameters[setting] : null;
    for (const item of this.changes) {
      if (item.setting === setting && item.step <= step) value = item.new;
    }
    if (value === null && setting === "quality_threshold")
      value = this.checks[0]?.threshold ?? null;
    if (value === null && setting === "cfg") value = this.checks[0]?.cfg ?? null;
    return value;
  }

  get threshold() {
    return this.valueAt("quality_threshold", Infinity);
  }

  get cfg() {
    return this.valueAt("cfg", Infinity);
  }

  /** The step at which the owner first set CFG (automatic CFG pauses from there), or null. */
  get ownerCfgStep() {
    const set = this.changes.find((c) => c.kind === "applied" && c.setting === "cfg");
    return set ? set.step : null;
  }

  /** Whether some check lacks a thumbnail that the server may have kept (ask for them then). */
  get wantsStoredPreviews() {
    if (this.parameters?.preview_size === 0) return false;
    if (this.checks.length <= this.storedPreviewsAsked) return false;
    return this.checks.some((c) => !c.preview);
  }

  /**
   * Thumbnails the server kept (`GET /api/runs/{id}/previews`): each fills the check of its step
   * that lacks one, as `{url, width, height, stored: true}` (a URL of the HTTP API).
   */
  addStoredPreviews(previews, askedAt = this.checks.length) {
    this.storedPreviewsAsked = Math.max(this.storedPreviewsAsked, askedAt);
    const byStep = new Map(previews.map((p) => [p.step, p]));
    let added = 0;
    for (const check of this.checks) {
      const kept = byStep.get(check.step);
      if (check.preview || !kept) continue;
      check.preview = { url: kept.url, width: kept.width, height: kept.height, stored: true };
      added += 1;
    }
    return added;
  }

  get latestPreview() {
    for (let i = this.checks.length - 1; i >= 0; i -= 1) {
      if (this.checks[i].preview) return this.checks[i];
    }
    return null;
  }

  blobImage({ format, width, height, data }) {
    const url = URL.createObjectURL(new Blob([data], { type: `image/${format}` }));
    this.objectUrls.push(url);
    return { url, width, height };
  }

  /** Free the images' memory; call when no view shows this run any more. */
  dispose() {
    for (const url of this.objectUrls) URL.revokeObjectURL(url);
    this.objectUrls = [];
  }

  /** A run as the HTTP API stored it (`GET /api/runs/{id}`); its previews come separately. */
  static fromRecord(record, imageUrl) {
    const run = new RunState(record.run_id);
    run.state = record.state;
    if (record.parameters) run.started(record.parameters);
    run.state = record.state;
    run.step = record.steps_run ?? 0;
    run.elapsed = record.elapsed ?? 0;
    run.checks = record.history.map((entry) => ({ ...entry, reason: "", preview: null }));
    if (record.state === "finished") {
      run.finished = {
        reason: record.reason,
        stepsRun: record.steps_run,
        elapsed: record.elapsed,
        finalScore: record.final_score,
        error: record.error,
      };
    }
    if (imageUrl && record.parameters) {
      run.image = {
        url: imageUrl,
        width: record.parameters.width,
        height: record.parameters.height,
      };
    }
    return run;
  }
}

function change(event, kind) {
  return { step: event.step, kind, setting: event.setting, old: event.old, new: event.new };
}
