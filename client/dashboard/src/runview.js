// One run's page, `#/runs/<run id>`: what it is, where it is, its quality chart, the latest
// preview large with the earlier ones as a filmstrip, the final image, what happened and why,
// and, for the tab that started it, the controls that steer it.
//
// The page watches the run through the app (replayed from its first event) and redraws at
// most once per animation frame, however fast the events come. A run the server no longer
// holds in memory is read from the HTTP API instead, and so is one whose replay cannot tell
// how it ended (the server was killed and restarted). Thumbnails a replay collapsed come from
// the HTTP API's kept previews, so the filmstrip has every check for every viewer.

import { candidateCurves, renderCandidates } from "./candidates.js";
import { QualityChart, fmt, settingName } from "./chart.js";
import { fill, h, reasonText, score, seconds, showNotice } from "./dom.js";
import { Filmstrip } from "./filmstrip.js";
import { describeError } from "./protocol.js";
import {
  endNotice,
  parametersText,
  progressFacts,
  runMeta,
  runTitle,
  tabTitle,
} from "./runfacts.js";
import { ImageSources, drawImage } from "./runimage.js";
import { drawInputs } from "./runinputs.js";
import { RunState } from "./runstate.js";
import { renderSteering } from "./steering.js";

const FULL_DRAW_MS = 400;

export function renderRun(main, app, runId) {
  let run = app.watch(runId);
  const view = buildLayout(main, runId, app, () => run);
  const chart = new QualityChart(view.chartBox);
  const strip = { selected: null };
  const images = new ImageSources(app);
  const filmstrip = new Filmstrip(view.filmstrip, {
    source: (preview) => images.of(preview),
    onSelect: (step) => {
      strip.selected = step;
      redrawAll();
    },
  });
  const steering = renderSteering(view.steer, app, () => run);
  const ending = { liveAtOpen: null, told: false };
  let frame = null;
  let full = true; // whether something besides progress changed since the last full draw
  let lastFull = 0;
  let later = null;
  let asking = false; // a request for kept previews or parameters is on its way

  // Progress comes every step: it updates the header at once and the rest (the chart's lines
  // reach the current step) at most every FULL_DRAW_MS, which keeps an open page cheap.
  const draw = () => {
    frame = null;
    drawHeader(view, run);
    steering.update();
    const wait = lastFull + FULL_DRAW_MS - performance.now();
    if (!full && wait > 0) {
      later ??= setTimeout(() => {
        later = null;
        full = true;
        redraw();
      }, wait);
      return;
    }
    full = false;
    lastFull = performance.now();
    chart.update(run);
    describeChart(view, run);
    drawTable(view, run);
    drawImage(view, run, strip, images, redrawAll);
    drawInputs(view.inputs, run, images);
    filmstrip.update(run, strip.selected);
    renderCandidates(view.candidates, run, images, candidateControls(app, runId));
    drawLog(view, run);
    tellTheEnd(view, run, ending);
    askTheStore();
  };
  const redraw = () => {
    if (frame === null) frame = requestAnimationFrame(draw);
  };
  const redrawAll = () => {
    full = true;
    redraw();
  };
  view.tableBox.addEventListener("toggle", () => drawTable(view, run));

  // What the events do not carry: the thumbnails a replay collapsed, and the parameters of a
  // run still in the queue (the server stored them when it accepted the run).
  const askTheStore = async () => {
    if (asking || run.missing) return;
    const wantsParameters = !run.parameters && run.state === "queued";
    if (!run.wantsStoredPreviews && !wantsParameters) return;
    asking = true;
    const asked = run.checks.length;
    try {
      if (wantsParameters) {
        const record = await app.api.run(runId);
        if (record.parameters) run.knowParameters(record.parameters);
      } else {
        const { previews } = await app.api.previews(runId);
        run.addStoredPreviews(previews, asked);
      }
      redrawAll();
    } catch {
      run.storedPreviewsAsked = asked; // not now; a later check asks again
    } finally {
      asking = false;
    }
  };

  const stopListening = app.onRun(runId, (changed, message) => {
    if (message.type === "error" && message.code === "unknown_run") {
      loadStored();
      return;
    }
    // The server says the run is over but has nothing after the events this page saw (it was
    // restarted and the run ended with it): how it ended is in the store.
    if (
      message.type === "subscribed" &&
      message.state === "finished" &&
      !run.finished &&
      message.last_seq <= run.lastSeq
    ) {
      loadStored();
      return;
    }
    if (message.type !== "progress") full = true;
    redraw();
  });

  const loadStored = async () => {
    try {
      const record = await app.api.run(runId);
      const image = record.image_url ? await app.api.imageSource(record.image_url) : null;
      if (image?.startsWith("blob:")) images.objectUrls.push(image);
      run = RunState.fromRecord(record, image);
      redrawAll();
    } catch (error) {
      fill(
        main,
        h(
          "div",
          { class: "card" },
          h("h1", {}, "Run not found"),
          h(
            "p",
            {},
            `This server knows no run “${runId}”. `,
            h("a", { href: "#/" }, "Back to the runs"),
          ),
        ),
      );
    }
  };
  if (run.missing) loadStored();
  draw();
  return {
    dispose() {
      if (frame !== null) cancelAnimationFrame(frame);
      clearTimeout(later);
      stopListening();
      steering.dispose();
      chart.destroy();
      filmstrip.destroy();
      images.dispose();
      app.unwatch(runId);
    },
  };
}

// The end of a run the page watched live: the tab's title says so, and a notification when
// the person allowed them.
function tellTheEnd(view, run, ending) {
  if (ending.liveAtOpen === null && run.state !== "unknown")
    ending.liveAtOpen = run.state !== "finished";
  const canAsk = typeof Notification !== "undefined" && Notification.permission === "default";
  view.notify.hidden = !(ending.liveAtOpen && run.state !== "finished" && canAsk);
  if (!ending.liveAtOpen || ending.told || !run.finished) return;
  ending.told = true;
  if (typeof Notification !== "undefined" && Notification.permission === "granted") {
    const { title, body } = endNotice(run);
    new Notification(title, { body, tag: `stepwatch-${run.runId}` });
  }
}

function buildLayout(main, runId, app, getRun) {
  const view = {
    title: h("h1", { id: "run-title" }, "Run"),
    meta: h("p", { class: "muted run-meta" }),
    state: h("span", { id: "run-state", class: "badge", role: "status" }, "connecting"),
    progress: h("progress", { id: "run-progress", max: 1, value: 0, "aria-label": "Steps done" }),
    progressText: h("p", { id: "run-progress-text", class: "progress-text" }),
    failure: h("div", { class: "form-error", role: "alert", hidden: true }),
    chartBox: h("div", { class: "chart", id: "quality-chart" }),
    chartKey: h("figcaption", { class: "chart-key" }),
    latestReason: h("p", { class: "latest-reason muted", id: "latest-reason" }),
    table: h("tbody"),
    tableSummary: h("summary", {}, "Checks as a table"),
    tableBox: null,
    image: h("figure", { class: "large-image", id: "run-image" }),
    inputs: h("div", {
      class: "run-inputs",
      id: "run-inputs",
      "aria-label": "Input images",
      hidden: true,
    }),
    filmstrip: h("ol", { class: "filmstrip", id: "filmstrip", "aria-label": "Earlier previews" }),
    steer: h("section", { class: "card steer", "aria-labelledby": "steer-title" }),
    candidates: h("section", {
      class: "card candidates-card",
      id: "candidates",
      "aria-labelledby": "candidates-title",
      hidden: true,
    }),
    log: h("ol", { class: "log", id: "run-log" }),
  };
  const page = `${window.location.origin}${window.location.pathname}`;
  const link = `${page}#/runs/${encodeURIComponent(runId)}`;
  const copy = copyButton("Copy link", "Link copied", () => link);
  view.copySeed = copyButton("Copy seed", "Seed copied", () => String(getRun().parameters.seed));
  view.copyParameters = copyButton("Copy parameters", "Parameters copied", () =>
    parametersText(getRun().parameters),
  );
  view.rerun = h(
    "a",
    { class: "button-link", href: `#/?rerun=${encodeURIComponent(runId)}`, hidden: true },
    "Re-run with these settings",
  );
  view.notify = h(
    "button",
    { type: "button", class: "secondary small", hidden: true },
    "Notify me when it ends",
  );
  view.notify.onclick = async () => {
    await Notification.requestPermission();
    view.notify.hidden = true;
  };
  view.tableBox = h(
    "details",
    { class: "checks-table" },
    view.tableSummary,
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Step", "Score", "Threshold", "CFG", "Decision"].map((t) =>
            h("th", { scope: "col" }, t),
          ),
        ),
      ),
      view.table,
    ),
  );
  view.enlarged = h("dialog", { class: "enlarged", "aria-label": "The image, large" });
  main.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "← All runs")),
    h(
      "header",
      { class: "run-head" },
      h("div", {}, view.title, view.meta),
      h("div", { class: "run-head-side" }, view.state, view.notify, copy),
    ),
    h("div", { class: "run-actions" }, view.rerun, view.copySeed, view.copyParameters),
    h("div", { class: "progress-row" }, view.progress, view.progressText),
    view.failure,
    h(
      "div",
      { class: "run-grid" },
      h(
        "figure",
        { class: "card chart-card", "aria-labelledby": "chart-title" },
        h("h2", { id: "chart-title" }, "Quality"),
        view.chartBox,
        view.chartKey,
        view.latestReason,
        view.tableBox,
      ),
      h("section", { class: "card image-card", "aria-label": "Image" }, view.image, view.inputs),
    ),
    h(
      "section",
      { class: "card strip-card", "aria-labelledby": "strip-title" },
      h("h2", { id: "strip-title" }, "Previews"),
      view.filmstrip,
    ),
    view.candidates,
    h(
      "div",
      { class: "run-lower" },
      view.steer,
      h(
        "section",
        { class: "card", "aria-labelledby": "log-title" },
        h("h2", { id: "log-title" }, "What happened"),
        view.log,
      ),
    ),
    view.enlarged,
  );
  return view;
}

function copyButton(label, done, text) {
  const button = h("button", { type: "button", class: "secondary small" }, label);
  button.onclick = async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = done;
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = label), 2000);
  };
  return button;
}

function drawHeader(view, run) {
  const p = run.parameters;
  view.title.textContent = runTitle(run);
  document.title = tabTitle(run);
  view.meta.textContent = runMeta(run);
  for (const action of [view.rerun, view.copySeed, view.copyParameters]) action.hidden = !p;
  const label = stateLabel(run);
  view.state.textContent = label;
  view.state.dataset.state = run.state;
  view.state.dataset.reason = run.finished?.reason ?? "";
  const progress = progressFacts(run, fmt);
  view.progress.max = progress.max;
  view.progress.value = progress.value;
  view.progressText.textContent = progress.text;
  const error = run.finished?.error;
  view.failure.hidden = !error;
  if (error) {
    const text = describeError(error);
    fill(
      view.failure,
      h("strong", {}, "The run failed. "),
      text.summary,
      text.detail ? ` ${text.detail}` : "",
      " ",
      h("code", {}, text.code),
    );
  }
}

function stateLabel(run) {
  if (run.state === "finished") return reasonText(run.finished?.reason ?? "finished");
  if (run.state === "unknown") return run.missing ? "stored" : "connecting";
  return run.state;
}

// The chart is a picture; the same facts in words and a table (and the data attributes the
// browser tests read) sit beside it.
// The owner's stop and keep of one candidate (null for a watcher without the run's token); a
// refusal (a candidate no longer live) is shown as a notice.
function candidateControls(app, runId) {
  const token = app.controlToken(runId);
  if (!token) return null;
  const send = (fields) =>
    app.request("stop", { run_id: runId, token, ...fields }, (reply) => {
      if (reply.type === "error") showNotice(describeError(reply));
    });
  return {
    stop: (candidate) => send({ candidate }),
    keep: (candidate) => send({ keep: candidate }),
  };
}

function describeChart(view, run) {
  const last = run.checks.at(-1);
  view.chartBox.dataset.checks = String(run.checks.length);
  view.chartBox.dataset.curves = String(candidateCurves(run).length);
  view.chartBox.dataset.steps = run.checks.map((c) => c.step).join(",");
  view.chartBox.dataset.threshold = run.threshold === null ? "" : String(run.threshold);
  fill(
    view.chartKey,
    h("span", { class: "key key-score" }, "score"),
    h("span", { class: "key key-threshold" }, `threshold ${fmt(run.threshold)}`),
    h("span", { class: "key key-cfg" }, "CFG (right axis)"),
    h("span", { class: "key key-raise" }, "CFG raised"),
    h("span", { class: "key key-early" }, "early stop"),
    h("span", { class: "key key-owner" }, "setting changed"),
    last
      ? h(
          "span",
          { class: "muted" },
          `${run.checks.length} checks, last ${score(last.score)} at step ${last.step}`,
        )
      : h("span", { class: "muted" }, "no check yet"),
  );
  view.tableSummary.textContent = `Checks as a table (${run.checks.length})`;
  // Why the latest check decided what it did (an early stop that waits for `min_steps` says so).
  view.latestReason.textContent = last?.reason
    ? `Latest check (step ${last.step}): ${decisionText(last.decision)}. ${last.reason}`
    : "";
}

// The table is drawn only while it is open, and grows by the new checks' rows.
function drawTable(view, run) {
  if (!view.tableBox.open) return;
  const rows = view.table.children;
  const prefix =
    rows.length <= run.checks.length &&
    [...rows].every((row, i) => Number(row.dataset.step) === run.checks[i].step);
  if (!prefix) fill(view.table);
  view.table.append(
    ...run.checks
      .slice(view.table.children.length)
      .map((c) =>
        h(
          "tr",
          { dataset: { step: c.step } },
          h("td", {}, c.step),
          h("td", {}, score(c.score)),
          h("td", {}, fmt(c.threshold)),
          h("td", {}, fmt(c.cfg)),
          h("td", {}, decisionText(c.decision)),
        ),
      ),
  );
}

// Entries in the order things happened: by `seq` where the events were seen, else by step
// (a stored run's history has no events).
function drawLog(view, run) {
  const entries = [];
  const add = (item, rank, ...text) =>
    entries.push({ step: item.step, order: item.seq ?? item.step * 10 + rank, text });
  for (const c of run.checks) {
    if (c.decision === "early_stop")
      add(c, 1, h("strong", {}, "Early stop"), ` at score ${score(c.score)}. ${c.reason}`);
  }
  for (const c of run.changes) {
    const what = `${capital(settingName(c.setting))} ${fmt(c.old)} → ${fmt(c.new)}`;
    if (c.kind === "applied") add(c, 0, h("strong", {}, what), " set by the owner.");
    else add(c, 1, h("strong", {}, what), ` by the policy: ${c.reason}`);
  }
  for (const s of run.stops)
    add(
      s,
      2,
      h("strong", {}, "Stopped"),
      ` by the owner (${s.mode === "finish" ? "keeping the image" : "no image"}).`,
    );
  if (run.finished) {
    const f = run.finished;
    add(
      { step: f.stepsRun, seq: f.seq },
      3,
      h("strong", {}, `Finished: ${reasonText(f.reason)}`),
      ` after ${f.stepsRun} steps and ${seconds(f.elapsed)}, final score ${score(f.finalScore)}.`,
    );
  }
  entries.sort((a, b) => a.order - b.order);
  // Redraw only when an entry came or went (the placeholder is one child with no entry).
  if (view.log.dataset.count === String(entries.length)) return;
  view.log.dataset.count = String(entries.length);
  if (entries.length === 0) {
    fill(
      view.log,
      h(
        "li",
        { class: "muted log-empty" },
        "Nothing yet: CFG changes, settings the owner changes and the end of the run appear here.",
      ),
    );
    return;
  }
  fill(
    view.log,
    entries.map((e) =>
      h("li", {}, h("span", { class: "log-step" }, `step ${e.step}`), h("span", {}, e.text)),
    ),
  );
}

function capital(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function decisionText(decision) {
  return (
    { continue: "continue", raise_cfg: "CFG raised", early_stop: "early stop" }[decision] ??
    decision
  );
}
