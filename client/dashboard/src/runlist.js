// The other runs: the live ones (to watch, read-only unless this browser started them) and
// the history from `/api/runs`, each with its quality curve and final image, searchable by
// prompt, each deletable.

import { fill, h, reasonText, score, sparkline, when } from "./dom.js";

const PAGE = 12;
const REFRESH_MS = 3000;
const SEARCH_SETTLE_MS = 250;

/** Render both lists into `box`, refreshed while shown; returns the function that stops them. */
export function renderRunLists(box, app) {
  const live = h("ul", { class: "live-list", "aria-live": "polite" });
  const history = h("ul", { class: "history-list" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show older runs");
  const problem = h("p", { class: "muted", role: "status" });
  const searchBox = h("input", {
    id: "history-search",
    type: "search",
    placeholder: "words of the prompt",
    autocomplete: "off",
  });
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
      h(
        "div",
        { class: "history-tools", role: "search" },
        h("label", { for: "history-search" }, "Search"),
        searchBox,
      ),
      problem,
      history,
      more,
    ),
  );
  const cards = new Map(); // run id -> its history card, made once
  const details = new Map(); // run id -> promise of its stored record (for the curve)
  let older = null; // `before` of the next older page, once "Show older runs" was used
  let search = ""; // the words the history is searched for
  let shownFor = ""; // the search the history list shows

  const remove = async (summary, card) => {
    if (!window.confirm(`Delete the run “${summary.prompt}” and its image from the history?`))
      return;
    try {
      await app.api.deleteRun(summary.run_id);
      card.remove();
      cards.delete(summary.run_id);
      details.delete(summary.run_id);
      problem.textContent = `Deleted the run “${summary.prompt}”.`;
    } catch (error) {
      problem.textContent = `The run could not be deleted: ${error.message}`;
    }
  };

  const showPage = (page, { append }) => {
    const finished = page.runs.filter((r) => r.state === "finished");
    if (!append)
      renderLive(
        live,
        page.runs.filter((r) => r.state !== "finished"),
        app,
      );
    const items = finished.map((summary) => {
      if (!cards.has(summary.run_id))
        cards.set(summary.run_id, historyCard(summary, app, details, remove));
      return cards.get(summary.run_id);
    });
    if (append) history.append(...items);
    else mergeNewest(history, items);
    if (history.children.length === 0)
      fill(problem, search ? `No finished run’s prompt has “${search}”.` : "No finished runs yet.");
    else if (!problem.textContent.startsWith("Deleted")) problem.textContent = "";
    return page.next_before;
  };

  const refresh = async () => {
    const asked = search;
    try {
      const page = await app.api.runs({ limit: PAGE, search: asked });
      if (asked !== search) return; // the words changed meanwhile; their answer comes
      if (asked !== shownFor) {
        fill(history);
        shownFor = asked;
        older = null;
      }
      const next = showPage(page, { append: false });
      if (older === null) older = next;
      more.hidden = older === null;
    } catch (error) {
      problem.textContent = `The list of runs could not be loaded: ${error.message}`;
    }
  };
  more.onclick = async () => {
    try {
      const page = await app.api.runs({ limit: PAGE, before: older, search: shownFor });
      older = showPage(page, { append: true });
      more.hidden = older === null;
    } catch (error) {
      problem.textContent = `Older runs could not be loaded: ${error.message}`;
    }
  };

  let typing = null;
  searchBox.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      search = searchBox.value.trim();
      refresh();
    }, SEARCH_SETTLE_MS);
  });

  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => {
    clearInterval(timer);
    clearTimeout(typing);
  };
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

function historyCard(summary, app, details, remove) {
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
  const card = h(
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
    h(
      "button",
      {
        type: "button",
        class: "link delete",
        "aria-label": `Delete the run “${summary.prompt || "(empty prompt)"}”`,
        onclick: () => remove(summary, card),
      },
      "Delete",
    ),
  );
  return card;
}
