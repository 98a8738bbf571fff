// What the run page says about a run, as pure functions of its RunState (no DOM): the title,
// the line of parameters, the progress line, the tab's title and the parameters as text.

import { reasonText, score, seconds } from "./dom.js";

/** "every step", "every 5 steps". */
export function everySteps(count) {
  return count === 1 ? "every step" : `every ${count} steps`;
}

export function runTitle(run) {
  const p = run.parameters;
  if (p) return p.prompt || "(empty prompt)";
  return run.state === "queued" ? "Queued run" : "Run";
}

export function runMeta(run) {
  const p = run.parameters;
  if (!p) return run.runId;
  return [
    p.model,
    `${p.width}×${p.height}`,
    `seed ${p.seed}`,
    `${p.sampler}/${p.scheduler}`,
    `verifier ${p.verifier}`,
    `check ${everySteps(p.check_interval)}`,
  ].join(" · ");
}

/** How long the rest of the run takes at the pace of the steps so far (the same for every
 * watcher of one progress event, and steady from one event to the next). */
export function steadyEta(run) {
  const total = run.total ?? run.parameters?.steps ?? null;
  if (run.state !== "running" || !total || run.step <= 0 || run.elapsed <= 0) return null;
  return (run.elapsed / run.step) * Math.max(total - run.step, 0);
}

/** The progress bar and the line under it: `{max, value, text}`. */
export function progressFacts(run, fmt) {
  const total = run.total ?? run.parameters?.steps ?? null;
  if (run.state === "queued" || run.state === "unknown" || total === null) {
    let text = "Waiting for the server…";
    if (run.state === "queued")
      text = run.queuePosition
        ? `Queued: ${run.queuePosition} ${run.queuePosition === 1 ? "run" : "runs"} ahead`
        : "Queued: starting soon";
    if (run.missing) text = "Stored run";
    return { max: 1, value: 0, text };
  }
  const parts = [`Step ${run.step} of ${total}`];
  const eta = steadyEta(run);
  if (eta !== null) parts.push(`about ${seconds(eta)} left`);
  parts.push(`${seconds(run.elapsed)} elapsed`);
  if (run.cfg !== null) parts.push(`CFG ${fmt(run.cfg)}`);
  if (run.threshold !== null) parts.push(`threshold ${fmt(run.threshold)}`);
  return { max: total, value: Math.min(run.step, total), text: parts.join(" · ") };
}

/** The browser tab's title: how far a running run is, or how it ended. */
export function tabTitle(run) {
  const title = runTitle(run);
  const total = run.total ?? run.parameters?.steps;
  if (run.state === "running" && total)
    return `${Math.floor((100 * Math.min(run.step, total)) / total)}% · ${title} · stepwatch`;
  if (run.state === "finished" && run.finished)
    return `${reasonText(run.finished.reason)} · ${title} · stepwatch`;
  return `${title} · stepwatch`;
}

/** What a notification at the end of a run says: `{title, body}`. */
export function endNotice(run) {
  const f = run.finished;
  return {
    title: `stepwatch: ${reasonText(f.reason)}`,
    body: `${runTitle(run)} · ${f.stepsRun} steps · score ${score(f.finalScore)}`,
  };
}

/**
 * The parameters as one block of text, in the manner image tools write into a PNG's
 * "parameters" chunk: the prompt, the negative prompt, then `Name: value` pairs.
 */
export function parametersText(p) {
  const lines = [p.prompt];
  if (p.negative_prompt) lines.push(`Negative prompt: ${p.negative_prompt}`);
  const pairs = [
    ["Steps", p.steps],
    ["Sampler", p.sampler],
    ["Schedule type", p.scheduler],
    ["CFG scale", p.cfg],
    ["Seed", p.seed],
    ["Size", `${p.width}x${p.height}`],
    ["Model", p.model],
    ["Verifier", p.verifier],
    ["Quality threshold", p.quality_threshold],
    ["Check interval", p.check_interval],
    ["Scale factor", p.scale_factor],
    ["CFG max", p.cfg_max],
    ["Early stop", p.early_stop ? `patience ${p.patience}, from step ${p.min_steps}` : "off"],
  ];
  lines.push(pairs.map(([name, value]) => `${name}: ${value}`).join(", "));
  return lines.join("\n");
}

/** The `start` fields that run these parameters again (the seed included). */
export function startFieldsOf(p) {
  const { preview_format: _format, ...fields } = p;
  return fields;
}

/** What the owner's stop did: where it took effect, and whether the run has finished since. */
export function stoppedText(step, run) {
  if (step === 0) return "Stopped before the first step.";
  if (run.state !== "finished") return `Stop applied at step ${step}; the run is finishing.`;
  const steps = run.finished?.stepsRun ?? step;
  return `Stop applied at step ${step}; the run has finished after ${steps} steps.`;
}

/** What the CFG box means now: the policy may raise it, or the owner's value holds. */
export function cfgNoteText(ownerCfgStep) {
  if (ownerCfgStep === null) return "The policy may raise CFG when a run falls clearly behind.";
  return `Automatic CFG paused: you set CFG at step ${ownerCfgStep}; it holds for the rest of the run.`;
}
