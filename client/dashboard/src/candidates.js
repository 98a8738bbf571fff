// A search's candidate grid: a cell per candidate with its latest thumbnail and score, pruned
// ones greyed out, resampled ones naming their parent, and the compute spent so far against a
// single run's. `candidateGrid` is the state (node --test); `renderCandidates` draws it.

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
    cells.set(result.candidate, cell);
  }
  const ordered = [...cells.values()].sort((a, b) => a.candidate - b.candidate);
  for (const cell of ordered) {
    cell.score = cell.scores.length ? cell.scores[cell.scores.length - 1].score : null;
    cell.greyed = cell.fate === "pruned";
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

/** A sentence about a cell's fate, for its caption. */
export function fateText(cell) {
  const last = cell.parents[cell.parents.length - 1];
  if (cell.fate === "pruned") return "pruned";
  if (cell.fate === "chosen") return "chosen";
  if (last) return `from #${last.parent} at step ${last.step}`;
  return cell.fate;
}

export function renderCandidates(box, run, images) {
  const grid = candidateGrid(run);
  box.hidden = grid === null;
  if (grid === null) return;
  const { evaluations, single } = grid.compute;
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
        );
      }),
    ),
  );
}
