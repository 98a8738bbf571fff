// One run's page, `#/runs/<run id>`: what it is, where it is, its quality chart, the latest
// preview large with the earlier ones as a filmstrip, the final image, what happened and why,
// and, for the tab that started it, the controls that steer it.
//
// The page watches the run through the app (replayed from its first event) and redraws at
// most once per animation frame, however fast the events come. A run the server no longer
// holds in memory is read from the HTTP API instead.

import { QualityChart, fmt, settingName } from "./chart.js";
import { fill, h, reasonText, score, seconds } from "./dom.js";
import { describeError } from "./protocol.js";
import { RunState } from "./runstate.js";
import { renderSteering } from "./steering.js";

const FULL_DRAW_MS = 400;

export function renderRun(main, app, runId) {
  let run = app.watch(runId);
  const view = buildLayout(main, runId);
  const chart = new QualityChart(view.chartBox);
  const strip = { shown: 0, selected: null };
  const steering = renderSteering(view.steer, app, () => run);
  let frame = null;
  let full = true; // whether something besides progress changed since the last full draw
  let lastFull = 0;
  let later = null;

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
    drawImage(view, run, strip);
    drawFilmstrip(view, run, strip, redrawAll);
    drawLog(view, run);
  };
  const redraw = () => {
    if (frame === null) frame = requestAnimationFrame(draw);
  };
  const redrawAll = () => {
    full = true;
    redraw();
  };
  const stopListening = app.onRun(runId, (changed, message) => {
    if (message.type === "error" && message.code === "unknown_run") {
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
      app.unwatch(runId);
    },
  };
}

function buildLayout(main, runId) {
  const view = {
    title: h("h1", { id: "run-title" }, "Run"),
    meta: h("p", { class: "muted run-meta" }),
    state: h("span", { id: "run-state", class: "badge", role: "status" }, "connecting"),
    progress: h("progress", { id: "run-progress", max: 1, value: 0, "aria-label": "Steps done" }),
    progressText: h("p", { id: "run-progress-text", class: "progress-text" }),
    failure: h("div", { class: "form-error", role: "alert", hidden: true }),
    chartBox: h("div", { class: "chart", id: "quality-chart" }),
    chartKey: h("figcaption", { class: "chart-key" }),
    table: h("tbody"),
    tableSummary: h("summary", {}, "Checks as a table"),
    image: h("figure", { class: "large-image", id: "run-image" }),
    filmstrip: h("ol", { class: "filmstrip", id: "filmstrip", "aria-label": "Earlier previews" }),
    steer: h("section", { class: "card steer", "aria-labelledby": "steer-title" }),
    log: h("ol", { class: "log", id: "run-log" }),
  };
  const page = `${window.location.origin}${window.location.pathname}`;
  const link = `${page}#/runs/${encodeURIComponent(runId)}`;
  const copy = h("button", { type: "button", class: "secondary small" }, "Copy link");
  copy.onclick = async () => {
    try {
      await navigator.clipboard.writeText(link);
      copy.textContent = "Link copied";
    } catch {
      copy.textContent = "Copy failed: use the address bar";
    }
  };
  main.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "← All runs")),
    h(
      "header",
      { class: "run-head" },
      h("div", {}, view.title, view.meta),
      h("div", { class: "run-head-side" }, view.state, copy),
    ),
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
        h(
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
        ),
      ),
      h("section", { class: "card image-card", "aria-label": "Image" }, view.image),
    ),
    h(
      "section",
      { class: "card strip-card", "aria-labelledby": "strip-title" },
      h("h2", { id: "strip-title" }, "Previews"),
      view.filmstrip,
    ),
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
  );
  return view;
}

function drawHeader(view, run) {
  const p = run.parameters;
  view.title.textContent = p ? p.prompt || "(empty prompt)" : `Run ${run.runId}`;
  document.title = `${view.title.textContent} · stepwatch`;
  view.meta.textContent = p
    ? [
        p.model,
        `${p.width}×${p.height}`,
        `seed ${p.seed}`,
        `${p.sampler}/${p.scheduler}`,
        `verifier ${p.verifier}`,
        `check every ${p.check_interval} steps`,
      ].join(" · ")
    : run.runId;
  const label = stateLabel(run);
  view.state.textContent = label;
  view.state.dataset.state = run.state;
  view.state.dataset.reason = run.finished?.reason ?? "";
  const total = run.total ?? p?.steps ?? 1;
  view.progress.max = total;
  view.progress.value = Math.min(run.step, total);
  const parts = [`Step ${run.step} of ${total}`];
  if (run.state === "running" && run.eta !== null) parts.push(`about ${seconds(run.eta)} left`);
  parts.push(`${seconds(run.elapsed)} elapsed`);
  if (run.cfg !== null) parts.push(`CFG ${fmt(run.cfg)}`);
  if (run.threshold !== null) parts.push(`threshold ${fmt(run.threshold)}`);
  if (run.state === "queued" && run.queuePosition)
    parts.unshift(`Queued: ${run.queuePosition} ahead`);
  view.progressText.textContent = parts.join(" · ");
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
function describeChart(view, run) {
  const last = run.checks.at(-1);
  view.chartBox.dataset.checks = String(run.checks.length);
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
  if (view.table.children.length === run.checks.length) return;
  fill(
    view.table,
    run.checks.map((c) =>
      h(
        "tr",
        {},
        h("td", {}, c.step),
        h("td", {}, score(c.score)),
        h("td", {}, fmt(c.threshold)),
        h("td", {}, fmt(c.cfg)),
        h("td", {}, decisionText(c.decision)),
      ),
    ),
  );
}

function drawImage(view, run, strip) {
  const selected =
    strip.selected !== null ? run.checks.find((c) => c.step === strip.selected && c.preview) : null;
  let image;
  let caption;
  let id;
  let alt;
  if (selected) {
    image = selected.preview;
    caption = [
      `Preview at step ${selected.step} · score ${score(selected.score)} `,
      h(
        "button",
        {
          type: "button",
          class: "link",
          onclick: () => {
            strip.selected = null;
            view.image.dataset.shown = "";
            drawImage(view, run, strip);
          },
        },
        "Back to the latest",
      ),
    ];
    id = `preview-${selected.step}`;
    alt = `the model's estimate of the final image at step ${selected.step}`;
  } else if (run.image) {
    image = run.image;
    const at = run.finished ? ` after ${run.finished.stepsRun} steps` : "";
    caption = [
      `Final image${at} · score ${score(run.finished?.finalScore)} · `,
      h("a", { href: run.image.url, download: `stepwatch-${run.runId}.png` }, "Download PNG"),
    ];
    id = "final";
    alt = "the run's final image";
  } else if (run.latestPreview) {
    const latest = run.latestPreview;
    image = latest.preview;
    const ended =
      run.state === "finished"
        ? "No final image: the run ended without one. Last preview"
        : "Latest preview";
    caption = [`${ended} · step ${latest.step} · score ${score(latest.score)}`];
    id = `preview-${latest.step}${run.state === "finished" ? "-ended" : ""}`;
    alt = `the model's estimate of the final image at step ${latest.step}`;
  } else {
    const waiting =
      run.state === "finished"
        ? "No final image: the run ended without one."
        : `The first preview comes at step ${run.parameters?.check_interval ?? "…"}.`;
    if (view.image.dataset.shown !== "none") {
      view.image.dataset.shown = "none";
      fill(view.image, h("div", { class: "image-placeholder" }, waiting));
    }
    return;
  }
  if (view.image.dataset.shown === id) return;
  view.image.dataset.shown = id;
  const pixelated = image.width <= 128 ? "pixelated" : "";
  fill(
    view.image,
    h("img", {
      src: image.url,
      width: image.width,
      height: image.height,
      class: pixelated,
      id: id === "final" ? "final-image" : "latest-preview",
      alt,
    }),
    h("figcaption", {}, caption),
  );
}

function drawFilmstrip(view, run, strip, redraw) {
  const frames = run.checks.filter((c) => c.preview);
  if (frames.length === 0 && view.filmstrip.children.length === 0) {
    fill(view.filmstrip, h("li", { class: "muted" }, "Previews appear here at every check."));
    return;
  }
  if (strip.shown === 0) fill(view.filmstrip);
  for (const check of frames.slice(strip.shown)) {
    const button = h(
      "button",
      {
        type: "button",
        class: "frame",
        "aria-label": `Show the preview of step ${check.step}, score ${score(check.score)}`,
      },
      h("img", {
        src: check.preview.url,
        alt: "",
        class: check.preview.width <= 128 ? "pixelated" : "",
      }),
      h("span", {}, `step ${check.step}`),
      h(
        "span",
        { class: "frame-score", dataset: { decision: check.decision } },
        score(check.score),
      ),
    );
    button.onclick = () => {
      strip.selected = check.step;
      redraw();
    };
    view.filmstrip.append(h("li", {}, button));
  }
  if (frames.length > strip.shown) view.filmstrip.scrollLeft = view.filmstrip.scrollWidth;
  strip.shown = frames.length;
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
  if (view.log.children.length === entries.length && entries.length > 0) return;
  if (entries.length === 0) {
    fill(
      view.log,
      h(
        "li",
        { class: "muted" },
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
