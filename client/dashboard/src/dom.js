// Small helpers for building the page: elements, numbers and durations as people read them.

/**
 * An element: `h("button", {class: "primary", onclick: go}, "Start")`. Attributes starting
 * with "on" become listeners; `null`, `undefined` and `false` attributes and children are
 * skipped; strings become text (never HTML).
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** A message for the person that belongs to no form: shown at the top until dismissed. */
export function showNotice({ summary, detail, code }) {
  const list = document.getElementById("notices");
  const item = h(
    "div",
    { class: "notice", role: "alert", dataset: { code } },
    h("p", {}, h("strong", {}, summary), detail ? ` ${detail}` : "", h("code", {}, code)),
    h("button", { type: "button", class: "link", onclick: () => item.remove() }, "Dismiss"),
  );
  list.append(item);
}

/** Replace everything inside `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 10) return `${value.toFixed(1)} s`;
  if (value < 120) return `${Math.round(value)} s`;
  const minutes = Math.floor(value / 60);
  return `${minutes} min ${Math.round(value - minutes * 60)} s`;
}

export function score(value) {
  return value === null || value === undefined ? "–" : value.toFixed(2);
}

export function when(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toLocaleString(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** How a run's end reads in a badge. */
export function reasonText(reason) {
  return (
    {
      completed: "completed",
      early_stop: "early stop",
      stopped: "stopped",
      failed: "failed",
      abandoned: "abandoned",
      shutdown: "server shut down",
    }[reason] ?? reason
  );
}

/** A small SVG line of a run's scores (0..1 over its steps), for lists of runs. */
export function sparkline(history, totalSteps, threshold) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 120;
  const height = 36;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("role", "img");
  const last = history.at(-1);
  svg.setAttribute(
    "aria-label",
    history.length
      ? `quality over ${history.length} checks, last ${score(last.score)}`
      : "no checks",
  );
  const steps = Math.max(totalSteps || last?.step || 1, 1);
  const x = (step) => (step / steps) * (width - 4) + 2;
  const y = (value) => height - 2 - value * (height - 4);
  if (threshold !== null && threshold !== undefined) {
    const line = document.createElementNS(ns, "line");
    Object.entries({
      x1: 0,
      x2: width,
      y1: y(threshold),
      y2: y(threshold),
      class: "spark-threshold",
    }).forEach(([k, v]) => line.setAttribute(k, v));
    svg.append(line);
  }
  if (history.length) {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute(
      "points",
      history.map((e) => `${x(e.step).toFixed(1)},${y(e.score).toFixed(1)}`).join(" "),
    );
    path.setAttribute("class", "spark-score");
    svg.append(path);
  }
  return svg;
}
