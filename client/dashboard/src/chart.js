// The quality chart of a run: score against step, the threshold in force as a stepped line,
// the CFG in force on a second axis, and marks where the policy raised CFG, where the run's
// owner changed a setting and where the run was stopped. Drawn with uPlot. A search adds a
// thin line per candidate (its score at each check it was live; pruned ones grey, a resampled
// one joined by a dashed line to the parent it continues from).

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { candidateCurves } from "./candidates.js";

const HEIGHT = 280;

/** Colours come from the page's CSS custom properties, so the chart follows the theme. */
function palette(element) {
  const style = getComputedStyle(element);
  const read = (name) => style.getPropertyValue(name).trim();
  return {
    score: read("--chart-score"),
    threshold: read("--chart-threshold"),
    cfg: read("--chart-cfg"),
    grid: read("--chart-grid"),
    text: read("--text-muted"),
    raise: read("--chart-raise"),
    early: read("--ok"),
    stop: read("--chart-stop"),
    owner: read("--chart-owner"),
    surface: read("--surface"),
  };
}

export class QualityChart {
  /** A chart inside `container` (an empty element whose width it takes). */
  constructor(container) {
    this.container = container;
    this.run = null;
    this.colors = palette(container);
    this.plot = new uPlot(this.options(), [[], [], [], []], container);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
  }

  options() {
    const c = this.colors;
    const axis = { stroke: c.text, grid: { stroke: c.grid, width: 1 }, ticks: { stroke: c.grid } };
    const stepped = uPlot.paths.stepped({ align: 1 });
    return {
      width: Math.max(this.container.clientWidth, 240),
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // A live run's axis spans the steps it plans; a finished one's the steps it ran.
        x: {
          time: false,
          range: (u, min, max) => [
            0,
            Math.max(this.run?.state === "finished" ? max : (this.run?.total ?? max), 1),
          ],
        },
        score: { range: [0, 1] },
        cfg: {
          range: (u, min, max) => [0, Math.max(max ?? 1, this.run?.parameters?.cfg_max ?? 0) * 1.1],
        },
      },
      axes: [
        { ...axis, label: "step" },
        {
          ...axis,
          scale: "score",
          label: "score",
          values: (u, ticks) => ticks.map((t) => t.toFixed(1)),
        },
        { ...axis, scale: "cfg", side: 1, label: "CFG", grid: { show: false } },
      ],
      series: [
        { label: "step" },
        {
          label: "score",
          scale: "score",
          stroke: c.score,
          width: 2,
          spanGaps: true,
          points: { show: true, size: 7, fill: c.surface, width: 2 },
        },
        {
          label: "threshold",
          scale: "score",
          stroke: c.threshold,
          width: 2,
          dash: [6, 4],
          paths: stepped,
          points: { show: false },
        },
        {
          label: "CFG",
          scale: "cfg",
          stroke: c.cfg,
          width: 1.5,
          paths: stepped,
          points: { show: false },
        },
      ],
      hooks: { draw: [(u) => this.drawMarks(u)] },
    };
  }

  /** Redraw from `run` (a RunState). */
  update(run) {
    this.run = run;
    this.plot.setData(chartData(run));
  }

  fit() {
    const width = this.container.clientWidth;
    if (width > 0 && width !== this.plot.width) this.plot.setSize({ width, height: HEIGHT });
  }

  drawMarks(u) {
    const run = this.run;
    if (!run) return;
    const ctx = u.ctx;
    const c = this.colors;
    const ratio = uPlot.pxRatio;
    const top = u.bbox.top;
    const bottom = u.bbox.top + u.bbox.height;
    ctx.save();
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    drawCandidates(ctx, u, run, c.text, ratio);
    for (const check of run.checks) {
      if (check.decision === "continue") continue;
      const x = u.valToPos(check.step, "x", true);
      const y = u.valToPos(check.score, "score", true);
      ring(ctx, x, y, 6 * ratio, check.decision === "raise_cfg" ? c.raise : c.early, 2 * ratio);
    }
    // Each mark's label goes on the first line where it overlaps no other label.
    const rules = [
      ...run.changes
        .filter((item) => item.kind === "applied")
        .map((item) => [item.step, c.owner, `${settingName(item.setting)} ${fmt(item.new)}`]),
      ...run.stops.map((stop) => [stop.step, c.stop, `stop (${stop.mode})`]),
      ...(run.ownerCandidates ?? []).map((o) => [o.step, c.owner, `${o.action} #${o.candidate}`]),
    ].sort((a, b) => a[0] - b[0]);
    const taken = []; // per line, the [left, right] extents of its labels
    const backings = []; // [left, top, width] of each label's backing
    for (const [step, color, label] of rules) {
      const x = u.valToPos(step, "x", true);
      const box = labelBox(ctx, x, label, u.bbox.left + u.bbox.width, ratio);
      let line = taken.findIndex((boxes) =>
        boxes.every(([l, r]) => box.right + 8 * ratio < l || box.left > r + 8 * ratio),
      );
      if (line === -1) line = taken.push([]) - 1;
      taken[line].push([box.left, box.right]);
      const textY = top + (2 + 14 * line) * ratio;
      rule(ctx, x, top, bottom, color, label, box, textY, ratio, c.surface);
      backings.push([box.left - 2 * ratio, textY - 1 * ratio, box.right - box.left + 4 * ratio]);
    }
    // A label's backing must not hide the threshold (a high one runs along the labels' lines):
    // the threshold is drawn again over the backings.
    if (backings.length) {
      ctx.beginPath();
      for (const [x, y, width] of backings) ctx.rect(x, y, width, 14 * ratio);
      ctx.clip();
      thresholdPath(ctx, u, c.threshold, ratio);
    }
    ctx.restore();
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}

function drawCandidates(ctx, u, run, grey, ratio) {
  const at = ([step, score]) => [u.valToPos(step, "x", true), u.valToPos(score, "score", true)];
  for (const curve of candidateCurves(run)) {
    ctx.strokeStyle = curve.greyed ? grey : curve.color;
    ctx.globalAlpha = curve.greyed ? 0.4 : 0.85;
    ctx.lineWidth = 1.25 * ratio;
    ctx.beginPath();
    curve.points.map(at).forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
    ctx.setLineDash([2 * ratio, 3 * ratio]);
    for (const [from, to] of curve.links) {
      ctx.beginPath();
      ctx.moveTo(...at(from));
      ctx.lineTo(...at(to));
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }
  ctx.globalAlpha = 1;
}

/** uPlot's aligned data for `run`: steps, then score, threshold and CFG at each step. */
export function chartData(run) {
  const steps = new Set([0, run.step]);
  for (const check of run.checks) steps.add(check.step);
  for (const item of run.changes) steps.add(item.step);
  for (const stop of run.stops) steps.add(stop.step);
  const xs = [...steps].sort((a, b) => a - b);
  const scores = new Map(run.checks.map((c) => [c.step, c.score]));
  return [
    xs,
    xs.map((s) => scores.get(s) ?? null),
    xs.map((s) => run.valueAt("quality_threshold", s)),
    xs.map((s) => run.valueAt("cfg", s)),
  ];
}

// The threshold in force as a stepped line (each value holds until the next step).
function thresholdPath(ctx, u, color, ratio) {
  const [xs, , thresholds] = u.data;
  ctx.beginPath();
  let started = false;
  for (let i = 0; i < xs.length; i += 1) {
    if (thresholds[i] === null || thresholds[i] === undefined) continue;
    const x = u.valToPos(xs[i], "x", true);
    const y = u.valToPos(thresholds[i], "score", true);
    if (started) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    started = true;
    const next = xs[i + 1];
    if (next !== undefined) ctx.lineTo(u.valToPos(next, "x", true), y);
  }
  ctx.setLineDash([6 * ratio, 4 * ratio]);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2 * ratio;
  ctx.stroke();
  ctx.setLineDash([]);
}

function ring(ctx, x, y, radius, color, width) {
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, 2 * Math.PI);
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.stroke();
}

// Where a mark's label goes: right of its line, or left of it where it would leave the plot.
function labelBox(ctx, x, label, right, ratio) {
  const width = ctx.measureText(label).width;
  const fits = x + 4 * ratio + width <= right;
  const left = fits ? x + 4 * ratio : x - 4 * ratio - width;
  return {
    left,
    right: left + width,
    align: fits ? "left" : "right",
    textX: fits ? left : left + width,
  };
}

function rule(ctx, x, top, bottom, color, label, box, textY, ratio, background) {
  ctx.beginPath();
  ctx.setLineDash([3 * ratio, 3 * ratio]);
  ctx.moveTo(x, top);
  ctx.lineTo(x, bottom);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5 * ratio;
  ctx.stroke();
  ctx.setLineDash([]);
  // A backing of the card's colour keeps the label readable where it crosses a line.
  ctx.fillStyle = background;
  ctx.fillRect(
    box.left - 2 * ratio,
    textY - 1 * ratio,
    box.right - box.left + 4 * ratio,
    14 * ratio,
  );
  ctx.fillStyle = color;
  ctx.textBaseline = "top";
  ctx.textAlign = box.align;
  ctx.fillText(label, box.textX, textY);
}

export function settingName(setting) {
  return (
    {
      quality_threshold: "threshold",
      scale_factor: "scale factor",
      check_interval: "check interval",
      cfg: "CFG",
    }[setting] ?? setting
  );
}

export function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}
