// The home page, `#/`: the form that starts a run beside the live runs and the history.

import { h } from "./dom.js";
import { renderRunLists } from "./runlist.js";
import { renderStartForm } from "./startform.js";

export function renderHome(main, app) {
  document.title = "stepwatch";
  const formColumn = h("div", { class: "column-form" });
  const listColumn = h("div", { class: "column-lists" });
  main.append(h("div", { class: "home" }, formColumn, listColumn));
  const stops = [renderStartForm(formColumn, app), renderRunLists(listColumn, app)];
  return { dispose: () => stops.forEach((stop) => stop()) };
}
