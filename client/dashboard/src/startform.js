// The form that starts a run: every `start` parameter, with the chosen model's defaults shown
// and its vocabulary offered as words to add to the prompt. Blank fields are left out of the
// message, so the server fills in its defaults.

import { fill, h } from "./dom.js";
import { describeError } from "./protocol.js";
import { startFieldsOf } from "./runfacts.js";

const MAX_CHIPS = 200;

/**
 * Render the form into `box`; returns a function that removes its listeners. `rerun`: the id
 * of a run whose settings fill the form.
 */
export function renderStartForm(box, app, { rerun = null } = {}) {
  const form = h("form", { class: "card start-form", "aria-labelledby": "start-title" });
  box.append(form);
  let builtFor = null;
  const settings = rerun ? app.api.run(rerun) : null;
  const rebuild = () => {
    const welcome = app.welcome;
    if (welcome && welcome !== builtFor) {
      builtFor = welcome;
      buildForm(form, app, welcome);
      if (settings)
        settings.then(
          (record) => fillForm(form, record),
          () => {},
        );
    } else if (!welcome && !builtFor) {
      fill(
        form,
        h("h2", { id: "start-title" }, "New run"),
        h("p", { class: "muted" }, "Waiting for the server…"),
      );
    }
    const submit = form.querySelector("button[type=submit]");
    if (submit) submit.disabled = !app.connection.isOpen || form.dataset.busy === "true";
  };
  rebuild();
  return app.onStatus(rebuild);
}

function buildForm(form, app, welcome) {
  const model = welcome.models[0];
  const alert = h("div", { class: "form-error", role: "alert", hidden: true });
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Words the model knows" });
  const prompt = h("textarea", {
    id: "f-prompt",
    name: "prompt",
    rows: 2,
    maxlength: welcome.limits.max_prompt_chars ?? 4000,
    placeholder: "What to draw, e.g. small red circle on a dark background",
    "aria-describedby": "f-prompt-help",
  });
  const modelSelect = select(
    "model",
    welcome.models.map((m) => [m.id, m.id]),
  );
  const verifierSelect = select("verifier", [
    ["", "model default"],
    ...welcome.verifiers.map((v) => [v.id, v.id]),
  ]);
  const samplerSelect = select("sampler", []);
  const schedulerSelect = select("scheduler", []);
  const modelHelp = h("p", { class: "help", id: "f-model-help" });
  const submit = h("button", { type: "submit", class: "primary" }, "Start run");

  fill(
    form,
    h("h2", { id: "start-title" }, "New run"),
    alert,
    field("Model", modelSelect, modelHelp),
    field(
      "Prompt",
      prompt,
      h("p", { class: "help", id: "f-prompt-help" }, "Words this model knows:"),
      chips,
    ),
    h(
      "div",
      { class: "grid-3" },
      field("Steps", number("steps", { min: 1, max: welcome.limits.max_steps ?? 1000 })),
      field("CFG", number("cfg", { min: 0, max: 30, step: 0.1 })),
      field("Seed", number("seed", { min: 0, placeholder: "random" })),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Quality checks"),
      field("Verifier", verifierSelect),
      h(
        "div",
        { class: "grid-3" },
        field(
          "Check every (steps)",
          number("check_interval", { min: 1, max: 1000, placeholder: "5" }),
        ),
        field("Threshold", number("quality_threshold", { min: 0, max: 1, step: 0.01 })),
        field(
          "Scale factor",
          number("scale_factor", { min: 1, max: 4, step: 0.05, placeholder: "1.25" }),
        ),
      ),
      checkbox("early_stop", "Stop early once quality holds at the threshold", true),
      h(
        "div",
        { class: "grid-2" },
        field(
          "Patience (checks in a row)",
          number("patience", { min: 1, max: 100, placeholder: "2" }),
        ),
        field(
          "No early stop before step",
          number("min_steps", { min: 0, max: 1000, placeholder: "half the steps" }),
        ),
      ),
    ),
    h(
      "details",
      { class: "more" },
      h("summary", {}, "More settings"),
      field(
        "Negative prompt",
        h("input", { id: "f-negative_prompt", name: "negative_prompt", type: "text" }),
      ),
      h(
        "div",
        { class: "grid-2" },
        field("Sampler", samplerSelect),
        field("Noise schedule", schedulerSelect),
      ),
      h(
        "div",
        { class: "grid-3" },
        field("Width", number("width", { min: 8, max: 2048 })),
        field("Height", number("height", { min: 8, max: 2048 })),
        field("Max CFG", number("cfg_max", { min: 0, max: 30, step: 0.1 })),
      ),
      field(
        "Preview size (pixels)",
        number("preview_size", { min: 0, max: 512, placeholder: "128" }),
      ),
    ),
    h("div", { class: "actions" }, submit),
  );

  const showModel = () => {
    const chosen = welcome.models.find((m) => m.id === modelSelect.value) ?? model;
    modelHelp.textContent = chosen.description;
    placeholders(form, chosen, welcome);
    fill(
      samplerSelect,
      option("", `default (${chosen.default_sampler})`),
      chosen.samplers.map((s) => option(s, s)),
    );
    fill(
      schedulerSelect,
      option("", `default (${chosen.default_scheduler})`),
      chosen.schedulers.map((s) => option(s, s)),
    );
    renderChips(chips, prompt, chosen.vocabulary);
  };
  modelSelect.addEventListener("change", showModel);
  verifierSelect.addEventListener("change", () =>
    placeholders(
      form,
      welcome.models.find((m) => m.id === modelSelect.value),
      welcome,
    ),
  );
  showModel();

  form.onsubmit = (event) => {
    event.preventDefault();
    send(form, app, alert);
  };
}

function placeholders(form, model, welcome) {
  const set = (name, text) => {
    form.elements[name].placeholder = text;
  };
  set("steps", String(model.default_steps));
  set("cfg", String(model.default_cfg));
  set("cfg_max", String(model.default_cfg_max));
  set("width", String(model.default_width));
  set("height", String(model.default_height));
  form.elements.width.step = model.size_multiple;
  form.elements.height.step = model.size_multiple;
  const verifierId = form.elements.verifier.value || model.default_verifier;
  const verifier = welcome.verifiers.find((v) => v.id === verifierId);
  if (verifier) set("quality_threshold", String(verifier.default_threshold));
  form.elements.verifier.options[0].textContent = `model default (${model.default_verifier})`;
}

function renderChips(chips, prompt, vocabulary) {
  const help = document.getElementById("f-prompt-help");
  if (!vocabulary) {
    help.textContent = "Free text: this model reads any prompt.";
    fill(chips);
    return;
  }
  help.textContent = `This model knows ${vocabulary.length} words; select one to add it.`;
  // Focus stays on the chip, so a keyboard user can go on to the next word.
  const add = (word) => {
    const text = prompt.value.trimEnd();
    prompt.value = text ? `${text} ${word}` : word;
  };
  fill(
    chips,
    vocabulary.slice(0, MAX_CHIPS).map((word) =>
      h(
        "button",
        {
          type: "button",
          class: "chip",
          onclick: () => add(word),
          "aria-label": `Add “${word}” to the prompt`,
        },
        word,
      ),
    ),
  );
}

/** Fill the form with a stored run's settings (seed included), to run them again. */
function fillForm(form, record) {
  if (!record.parameters) return;
  const fields = startFieldsOf(record.parameters);
  const model = form.elements.model;
  if ([...model.options].some((o) => o.value === fields.model)) {
    model.value = fields.model;
    model.dispatchEvent(new Event("change"));
  }
  for (const [name, value] of Object.entries(fields)) {
    const element = form.elements[name];
    if (!element || name === "model") continue;
    if (element.type === "checkbox") element.checked = Boolean(value);
    else if (element.tagName === "SELECT") {
      if ([...element.options].some((o) => o.value === String(value))) element.value = value;
    } else element.value = String(value);
  }
  form.elements.verifier.dispatchEvent(new Event("change"));
  const note = h(
    "p",
    { class: "help", id: "rerun-note", role: "status" },
    `The settings of run ${record.run_id} (seed ${fields.seed}): change any of them and start.`,
  );
  form.querySelector("#rerun-note")?.remove();
  form.querySelector("h2").after(note);
  form.elements.prompt.focus();
}

/** The `start` fields the form holds; blank inputs are left out (the server's default). */
export function startFields(form) {
  const fields = { prompt: form.elements.prompt.value.trim() };
  for (const element of form.elements) {
    if (!element.name || element.name === "prompt" || element.type === "checkbox") continue;
    const value = element.value.trim();
    if (value === "") continue;
    fields[element.name] = element.type === "number" ? Number(value) : value;
  }
  fields.early_stop = form.elements.early_stop.checked;
  return fields;
}

function send(form, app, alert) {
  clearErrors(form, alert);
  const submit = form.querySelector("button[type=submit]");
  const requestId = app.request("start", startFields(form), (reply) => {
    form.dataset.busy = "false";
    submit.disabled = false;
    submit.textContent = "Start run";
    if (reply.type === "accepted") {
      app.adoptRun(reply);
      window.location.hash = `#/runs/${encodeURIComponent(reply.run_id)}`;
    } else if (reply.type === "error") {
      showError(form, alert, describeError(reply));
    }
  });
  if (requestId === null) {
    showError(form, alert, {
      code: "disconnected",
      summary: "Not connected to the server.",
      detail: "The run was not started; try again once the dashboard has reconnected.",
      field: null,
    });
    return;
  }
  form.dataset.busy = "true";
  submit.disabled = true;
  submit.textContent = "Starting…";
}

function showError(form, alert, error) {
  fill(
    alert,
    h("strong", {}, error.summary),
    error.detail ? ` ${error.detail}` : "",
    " ",
    h("code", {}, error.code),
  );
  alert.hidden = false;
  const input = error.field ? form.elements[error.field.split(/[.[]/)[0]] : null;
  if (input && input.id) {
    input.setAttribute("aria-invalid", "true");
    const note = h(
      "p",
      { class: "field-error", id: `${input.id}-error` },
      error.detail || error.summary,
    );
    input.closest(".field").append(note);
    input.setAttribute("aria-errormessage", note.id);
    input.focus();
  }
}

function clearErrors(form, alert) {
  alert.hidden = true;
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-errormessage");
  }
}

function field(label, input, ...after) {
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, ...after);
}

function number(name, { placeholder, ...limits }) {
  return h("input", {
    id: `f-${name}`,
    name,
    type: "number",
    inputmode: "decimal",
    placeholder,
    ...limits,
  });
}

function select(name, options) {
  return h(
    "select",
    { id: `f-${name}`, name },
    options.map(([value, text]) => option(value, text)),
  );
}

function option(value, text) {
  return h("option", { value }, text);
}

function checkbox(name, label, checked) {
  return h(
    "div",
    { class: "field check" },
    h("input", { id: `f-${name}`, name, type: "checkbox", checked }),
    h("label", { for: `f-${name}` }, label),
  );
}
