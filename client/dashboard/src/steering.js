// The controls that steer a run: the threshold slider, CFG, and Stop (keep the image, or
// abort). Only the tab that holds the run's control token gets them; every change is shown
// as sent, then as the run acknowledged it: the old and new value and the step it took effect.

import { fmt, settingName } from "./chart.js";
import { fill, h } from "./dom.js";
import { describeError } from "./protocol.js";
import { cfgNoteText, stoppedText } from "./runfacts.js";

const SLIDER_SETTLE_MS = 200;

/** Render into `section`; `getRun()` is the run shown. Returns `{update, dispose}`. */
export function renderSteering(section, app, getRun) {
  const runId = getRun().runId;
  let owned = false; // this browser held the run's token (forgotten once the run finished)
  const token = () => app.controlToken(runId);
  const ack = h("p", { id: "steer-ack", class: "ack", role: "status", "aria-live": "polite" });
  const slider = h("input", { id: "steer-threshold", type: "range", min: 0, max: 1, step: 0.01 });
  const sliderValue = h("output", { for: "steer-threshold", id: "steer-threshold-value" });
  const cfgInput = h("input", {
    id: "steer-cfg",
    type: "number",
    min: 0,
    max: 30,
    step: 0.05,
    inputmode: "decimal",
    required: true,
  });
  const cfgButton = h("button", { type: "submit", class: "secondary" }, "Apply CFG");
  const cfgNote = h("p", { id: "steer-cfg-note", class: "muted" });
  // Stopping and keeping the image is the ordinary way to end a run; aborting loses the image.
  const finishButton = h("button", { type: "button", class: "secondary" }, "Stop and keep image");
  const abortButton = h("button", { type: "button", class: "danger" }, "Abort (no image)");
  let pendingThreshold = null;
  let settle = null;
  let stopApplied = null; // the step the owner's stop took effect, until the run has finished

  const say = (text, tone = "") => {
    ack.dataset.tone = tone;
    fill(ack, text);
  };
  const send = (type, fields, sentText, onApplied) => {
    const requestId = app.request(type, { run_id: runId, token: token(), ...fields }, (reply) => {
      if (reply.type === "applied") say(onApplied(reply), "ok");
      else if (reply.type === "error") {
        const error = describeError(reply);
        say(
          [
            h("strong", {}, error.summary),
            error.detail ? ` ${error.detail} ` : " ",
            h("code", {}, error.code),
          ],
          "error",
        );
      }
      if (requestId === pendingThreshold) pendingThreshold = null;
    });
    if (requestId === null) say("Not connected to the server: nothing was sent.", "error");
    else say(sentText, "pending");
    return requestId;
  };
  const changed = (reply) =>
    reply.changes
      .map((c) => `${capital(settingName(c.setting))} ${fmt(c.old)} → ${fmt(c.new)}`)
      .join(", ") + `, applied from step ${reply.step}.`;

  cfgInput.oninput = () => {
    cfgInput.dataset.edited = "true";
  };
  slider.oninput = () => {
    sliderValue.textContent = fmt(Number(slider.value));
  };
  slider.onchange = () => {
    clearTimeout(settle);
    settle = setTimeout(() => {
      settle = null;
      const value = Number(slider.value);
      pendingThreshold = send(
        "set",
        { quality_threshold: value },
        `Setting the threshold to ${fmt(value)}…`,
        changed,
      );
    }, SLIDER_SETTLE_MS);
  };
  const cfgForm = h(
    "form",
    {
      class: "steer-row",
      onsubmit: (event) => {
        event.preventDefault();
        const value = Number(cfgInput.value);
        delete cfgInput.dataset.edited;
        send("set", { cfg: value }, `Setting CFG to ${fmt(value)}…`, changed);
      },
    },
    h("label", { for: "steer-cfg" }, "CFG"),
    cfgInput,
    cfgButton,
  );
  const stop = (mode) => {
    send("stop", { mode }, mode === "finish" ? "Stopping…" : "Aborting…", (reply) => {
      stopApplied = reply.step;
      return stoppedText(reply.step, getRun());
    });
  };
  finishButton.onclick = () => stop("finish");
  abortButton.onclick = () => stop("abort");

  const update = () => {
    const run = getRun();
    owned ||= Boolean(token());
    if (!owned) {
      fill(
        section,
        h("h2", { id: "steer-title" }, "Steer"),
        h(
          "p",
          { class: "muted", id: "steer-readonly" },
          run.state === "finished"
            ? "The run has finished; there is nothing left to steer."
            : "You are watching this run. Only the browser that started it can steer it.",
        ),
      );
      return;
    }
    if (!section.contains(slider)) {
      fill(
        section,
        h("h2", { id: "steer-title" }, "Steer"),
        h(
          "div",
          { class: "steer-row" },
          h("label", { for: "steer-threshold" }, "Threshold"),
          slider,
          sliderValue,
        ),
        cfgForm,
        cfgNote,
        h("div", { class: "steer-row stop-row" }, finishButton, abortButton),
        ack,
      );
    }
    const over = run.state === "finished";
    const known = run.threshold !== null;
    for (const control of [slider, cfgInput, cfgButton, finishButton, abortButton])
      control.disabled = over || !app.connection.isOpen;
    slider.disabled ||= !known;
    if (over && stopApplied !== null) {
      say(stoppedText(stopApplied, run), "ok");
      stopApplied = null;
    } else if (over && !ack.textContent) {
      say("The run has finished; there is nothing left to steer.");
    }
    const editing =
      document.activeElement === slider || settle !== null || pendingThreshold !== null;
    if (!editing && run.threshold !== null) {
      slider.value = String(run.threshold);
      sliderValue.textContent = fmt(run.threshold);
    }
    // The CFG box follows the run (the policy raises CFG) until the owner starts typing in it.
    if (!cfgInput.dataset.edited && run.cfg !== null)
      cfgInput.value = String(Number(run.cfg.toFixed(2)));
    fill(cfgNote, cfgNoteText(run.ownerCfgStep));
  };
  const stopStatus = app.onStatus(update);
  return {
    update,
    dispose() {
      clearTimeout(settle);
      stopStatus();
    },
  };
}

function capital(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
