// The home page, `#/`: the form that starts a run beside the live runs and the history.
// `#/?rerun=<run id>` fills the form with that run's settings.

import { h } from "./dom.js";
import { renderRunLists } from "./runlist.js";
import { renderStartForm } from "./startform.js";

export function renderHome(main, app, { rerun = null } = {}) {
  document.title = "stepwatch";
  const formColumn = h("div", { class: "column-form" });
  const listColumn = h("div", { class: "column-lists" });
  main.append(
    h(
      "h1",
      { class: "visually-hidden" },
      "stepwatch: start a run, watch the live runs, browse the history",
    ),
    h("div", { class: "home" }, formColumn, listColumn),
  );
  const stops = [renderStartForm(formColumn, app, { rerun }), renderRunLists(listColumn, app)];
  return { dispose: () => stops.forEach((stop) => stop()) };
}
