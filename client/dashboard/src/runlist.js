// The other runs: the live ones (to watch, read-only unless this tab started them) and the
// history from `/api/runs`, each with its quality curve and final image.

import { fill, h, reasonText, score, sparkline, when } from "./dom.js";

const PAGE = 12;
const REFRESH_MS = 3000;

/** Render both lists into `box`, refreshed while shown; returns the function that stops them. */
export function renderRunLists(box, app) {
  const live = h("ul", { class: "live-list", "aria-live": "polite" });
  const history = h("ul", { class: "history-list" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show older runs");
  const problem = h("p", { class: "muted", role: "status" });
  box.append(
    h(
      "section",
      { class: "card", "aria-labelledby": "live-title" },
      h("h2", { id: "live-title" }, "Live runs"),
      live,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, "History"),
      problem,
      history,
      more,
    ),
  );
  const cards = new Map(); // run id -> its history card, made once
  const details = new Map(); // run id -> promise of its stored record (for the curve)
  let older = null; // `before` of the next older page, once "Show older runs" was used

  const showPage = (page, { append }) => {
    const finished = page.runs.filter((r) => r.state === "finished");
    if (!append)
      renderLive(
        live,
        page.runs.filter((r) => r.state !== "finished"),
        app,
      );
    const items = finished.map((summary) => {
      if (!cards.has(summary.run_id)) cards.set(summary.run_id, historyCard(summary, app, details));
      return cards.get(summary.run_id);
    });
    if (append) history.append(...items);
    else mergeNewest(history, items);
    if (history.children.length === 0) fill(problem, "No finished runs yet.");
    else problem.textContent = "";
    return page.next_before;
  };

  const refresh = async () => {
    try {
      const page = await app.api.runs({ limit: PAGE });
      const next = showPage(page, { append: false });
      if (older === null) older = next;
      more.hidden = older === null;
    } catch (error) {
      problem.textContent = `The list of runs could not be loaded: ${error.message}`;
    }
  };
  more.onclick = async () => {
    try {
      const page = await app.api.runs({ limit: PAGE, before: older });
      older = showPage(page, { append: true });
      more.hidden = older === null;
    } catch (error) {
      problem.textContent = `Older runs could not be loaded: ${error.message}`;
    }
  };

  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}

function renderLive(list, runs, app) {
  if (runs.length === 0) {
    fill(list, h("li", { class: "muted" }, "No run is going on."));
    return;
  }
  fill(
    list,
    runs.map((run) =>
      h(
        "li",
        {},
        h(
          "a",
          { href: `#/runs/${encodeURIComponent(run.run_id)}` },
          h("span", { class: "prompt" }, run.prompt || "(empty prompt)"),
          h("span", { class: "badge", dataset: { state: run.state } }, run.state),
          h("span", { class: "muted" }, app.controlToken(run.run_id) ? "yours" : "watch"),
        ),
      ),
    ),
  );
}

// The first page comes again every few seconds: keep the cards already shown and put new ones
// in their place by run number (newest first), leaving the older pages below alone.
function mergeNewest(list, items) {
  for (const item of items) {
    if (item.parentElement === list) continue;
    const number = Number(item.dataset.number);
    const after = [...list.children].find((card) => Number(card.dataset.number) < number);
    list.insertBefore(item, after ?? null);
  }
}

function historyCard(summary, app, details) {
  const thumb = h("div", { class: "thumb" });
  if (summary.image_url) {
    const image = h("img", { alt: `final image of “${summary.prompt}”`, loading: "lazy" });
    app.api.imageSource(summary.image_url).then(
      (src) => (image.src = src),
      () => {},
    );
    thumb.append(image);
  } else {
    thumb.append(h("span", { class: "muted" }, "no image"));
  }
  const curve = h("div", { class: "curve" });
  if (!details.has(summary.run_id)) details.set(summary.run_id, app.api.run(summary.run_id));
  details.get(summary.run_id).then(
    (record) =>
      curve.append(
        sparkline(record.history, record.steps_run, record.parameters?.quality_threshold),
      ),
    () => {},
  );
  return h(
    "li",
    { dataset: { runId: summary.run_id, number: summary.number } },
    h(
      "a",
      { href: `#/runs/${encodeURIComponent(summary.run_id)}`, class: "history-card" },
      thumb,
      h(
        "div",
        { class: "history-text" },
        h("span", { class: "prompt" }, summary.prompt || "(empty prompt)"),
        h(
          "span",
          { class: "muted" },
          [
            summary.model,
            `${summary.steps_run} steps`,
            `score ${score(summary.final_score)}`,
            when(summary.created_at),
          ].join(" · "),
        ),
      ),
      curve,
      h(
        "span",
        { class: "badge", dataset: { reason: summary.reason } },
        reasonText(summary.reason),
      ),
    ),
  );
}
