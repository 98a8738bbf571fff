// A search's candidate grid: a cell per candidate with its latest thumbnail and score, pruned
// ones greyed out, resampled ones naming their parent, and the compute spent so far against a
// single run's; for the run's owner, buttons to stop or keep each live candidate.
// `candidateGrid` is the state (node --test); `renderCandidates` draws it.

import { fill, h } from "./dom.js";

/**
 * The grid of a run: null for a single run. Each cell holds a candidate's scores at every
 * check it was live (its curve), its latest thumbnail, its fate and lineage.
 */
export function candidateGrid(run) {
  const searched = run.checks.filter((c) => c.candidates?.length);
  if (!searched.length && !run.finished?.candidates?.length) return null;
  const cells = new Map();
  for (const check of searched) {
    for (const c of check.candidates) {
      const cell = cells.get(c.candidate) ?? {
        candidate: c.candidate,
        scores: [],
        preview: null,
        fate: "live",
        parents: [],
      };
      cell.scores.push({ step: check.step, score: c.score });
      if (c.preview) cell.preview = c.preview;
      cell.fate = c.fate;
      if (c.parent !== null) cell.parents.push({ step: check.step, parent: c.parent });
      cells.set(c.candidate, cell);
    }
  }
  for (const result of run.finished?.candidates ?? []) {
    const cell = cells.get(result.candidate) ?? {
      candidate: result.candidate,
      scores: [],
      preview: null,
      parents: [],
    };
    cell.fate = result.fate;
    cell.byOwner = Boolean(result.by_owner);
    cells.set(result.candidate, cell);
  }
  // The owner's stops and keeps act between checks: a stopped lane is out of the batch at once.
  for (const { candidate, action } of run.ownerCandidates ?? []) {
    for (const cell of cells.values()) {
      const out = action === "stop" ? cell.candidate === candidate : cell.candidate !== candidate;
      if (out && !run.finished && cell.fate !== "pruned") {
        cell.fate = "pruned";
        cell.byOwner = true;
      }
    }
  }
  const ordered = [...cells.values()].sort((a, b) => a.candidate - b.candidate);
  for (const cell of ordered) {
    cell.score = cell.scores.length ? cell.scores[cell.scores.length - 1].score : null;
    cell.greyed = cell.fate === "pruned";
    cell.live = !run.finished && !cell.greyed;
  }
  return { cells: ordered, compute: spent(run, searched) };
}

// Denoiser evaluations so far: the finished run's count, or, while it runs, the live
// candidates of each check times the steps since the one before (CFG counts twice).
function spent(run, searched) {
  const compute = run.finished?.compute;
  if (compute)
    return { evaluations: compute.denoiser_evaluations, single: compute.single_run_evaluations };
  const passes = run.parameters && run.parameters.cfg > 1 ? 2 : 1;
  let evaluations = 0;
  let before = 0;
  let lanes = searched[0]?.candidates.length ?? 0;
  for (const check of searched) {
    evaluations += lanes * (check.step - before) * passes;
    before = check.step;
    lanes = check.candidates.filter((c) => c.fate !== "pruned").length;
  }
  evaluations += lanes * Math.max(run.step - before, 0) * passes;
  return { evaluations, single: (run.total ?? run.step) * passes };
}

/** The candidates' line colours, by candidate number (they repeat after eight). */
export const CANDIDATE_COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#59a14f",
  "#b07aa1",
  "#76b7b2",
  "#edc948",
  "#ff9da7",
  "#9c755f",
];

/** Each candidate's curve as `[{candidate, color, greyed, points, links}]`: `points` the
 * [step, score] of its checks, `links` the [[step, score], [step, score]] from a parent's point
 * to its own next one where it was resampled. Empty for a single run. */
export function candidateCurves(run) {
  const grid = candidateGrid(run);
  if (grid === null) return [];
  const byNumber = new Map(grid.cells.map((cell) => [cell.candidate, cell]));
  return grid.cells.map((cell) => {
    const points = cell.scores.map(({ step, score }) => [step, score]);
    const links = [];
    for (const { step, parent } of cell.parents) {
      const from = byNumber.get(parent)?.scores.find((s) => s.step === step);
      const to = cell.scores.find((s) => s.step > step);
      if (from && to)
        links.push([
          [step, from.score],
          [to.step, to.score],
        ]);
    }
    const color = CANDIDATE_COLORS[cell.candidate % CANDIDATE_COLORS.length];
    return { candidate: cell.candidate, color, greyed: cell.greyed, points, links };
  });
}

/** A sentence about a cell's fate, for its caption. */
export function fateText(cell) {
  const last = cell.parents[cell.parents.length - 1];
  if (cell.fate === "pruned") return cell.byOwner ? "stopped by its owner" : "pruned";
  if (cell.fate === "chosen") return cell.byOwner ? "kept by its owner" : "chosen";
  if (last) return `from #${last.parent} at step ${last.step}`;
  return cell.fate;
}

/**
 * Draw the grid into `box`. `controls` (for the run's owner only) has `stop(candidate)` and
 * `keep(candidate)`; each live cell then gets a button for each, while more than one is live.
 */
export function renderCandidates(box, run, images, controls = null) {
  const grid = candidateGrid(run);
  box.hidden = grid === null;
  if (grid === null) return;
  const { evaluations, single } = grid.compute;
  const live = grid.cells.filter((cell) => cell.live).length;
  const ratio = single ? (evaluations / single).toFixed(2) : "-";
  fill(
    box,
    h("h2", { id: "candidates-title" }, "Candidates"),
    h(
      "p",
      { class: "muted", id: "candidates-compute" },
      `${evaluations} denoiser evaluations so far, ${ratio}× one run's ${single}`,
    ),
    h(
      "ol",
      { class: "candidate-grid", id: "candidate-grid" },
      grid.cells.map((cell) => {
        const img = h("img", { alt: `candidate ${cell.candidate}`, width: 64, height: 64 });
        if (cell.preview) images.of(cell.preview).then((url) => (img.src = url));
        return h(
          "li",
          {
            class: `candidate ${cell.greyed ? "pruned" : ""} fate-${cell.fate}`,
            "data-candidate": cell.candidate,
            "data-fate": cell.fate,
          },
          img,
          h(
            "span",
            { class: "candidate-score" },
            `#${cell.candidate} ${cell.score === null ? "-" : cell.score.toFixed(3)}`,
          ),
          h("span", { class: "candidate-fate muted" }, fateText(cell)),
          controls && cell.live && live > 1 ? buttons(cell.candidate, controls) : null,
        );
      }),
    ),
  );
}

function buttons(candidate, controls) {
  const button = (label, action, title) =>
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        "data-action": action,
        title,
        onclick: () => controls[action](candidate),
      },
      label,
    );
  return h(
    "span",
    { class: "candidate-actions" },
    button("Stop", "stop", `Stop candidate ${candidate}; the search goes on`),
    button("Keep", "keep", `Keep candidate ${candidate}; every other one stops`),
  );
}
