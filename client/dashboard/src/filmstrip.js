// The filmstrip: one frame per check of the run, in step order, each with its thumbnail.
//
// It stays cheap on a run of hundreds of checks: frames are added, never rebuilt; a frame's
// image is loaded only while the frame is near the visible part of the strip; and the strip
// is one stop of the Tab key (the arrow keys, Home and End move between its frames).

import { h, score } from "./dom.js";

/** The frames to show: every check, by step; `null` when the run makes no previews. */
export function filmstripFrames(run) {
  if (run.parameters?.preview_size === 0) return null;
  return run.checks.map((check) => ({
    step: check.step,
    score: check.score,
    decision: check.decision,
    preview: check.preview,
  }));
}

/** The frame that holds the strip's one Tab stop: the selected one, else the latest. */
export function focusStep(frames, selected) {
  if (frames.length === 0) return null;
  if (selected !== null && frames.some((f) => f.step === selected)) return selected;
  return frames.at(-1).step;
}

/** The frame a key moves to from `step`; `null` when the key moves nothing. */
export function frameAfterKey(frames, step, key) {
  const index = frames.findIndex((f) => f.step === step);
  if (index === -1) return null;
  const target = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: frames.length - 1 }[
    key
  ];
  if (target === undefined) return null;
  return frames[Math.min(Math.max(target, 0), frames.length - 1)].step;
}

export class Filmstrip {
  /**
   * Draw into the list `list`. `source(preview)` resolves a preview to a URL an <img> shows
   * (a promise); `onSelect(step)` is called when a frame is chosen.
   */
  constructor(list, { source, onSelect }) {
    this.list = list;
    this.source = source;
    this.onSelect = onSelect;
    this.items = new Map(); // step -> {li, button, img, preview, loaded}
    this.frames = [];
    this.selected = null;
    this.placeholder = null;
    this.observer = new IntersectionObserver((entries) => this.visible(entries), {
      root: list,
      rootMargin: "0px 600px",
    });
    list.addEventListener("keydown", (event) => this.key(event));
  }

  update(run, selected) {
    this.selected = selected;
    const frames = filmstripFrames(run);
    if (frames === null || frames.length === 0) {
      this.showPlaceholder(
        frames === null
          ? "This run makes no previews."
          : `Previews appear here at every check (every ${run.parameters?.check_interval ?? "few"} steps).`,
      );
      return;
    }
    this.hidePlaceholder();
    const wasAtEnd = this.list.scrollLeft + this.list.clientWidth >= this.list.scrollWidth - 8;
    let added = false;
    let next = null; // the item after the one being placed, walking from the end
    for (let i = frames.length - 1; i >= 0; i -= 1) {
      const frame = frames[i];
      let item = this.items.get(frame.step);
      if (!item) {
        item = this.makeItem(frame);
        this.list.insertBefore(item.li, next?.li ?? null);
        this.observer.observe(item.li);
        added = true;
      }
      if (!item.preview && frame.preview) {
        item.preview = frame.preview;
        if (item.near) this.load(item);
      }
      next = item;
    }
    this.frames = frames;
    const focus = focusStep(frames, selected);
    for (const [step, item] of this.items) {
      item.button.tabIndex = step === focus ? 0 : -1;
      item.button.setAttribute("aria-pressed", String(step === selected));
    }
    // Follows the newest frame unless the person scrolled back (no smooth scrolling here: the
    // strip must be at its end by the next check, however fast they come).
    if (added && wasAtEnd) this.list.scrollTo({ left: this.list.scrollWidth, behavior: "instant" });
  }

  makeItem(frame) {
    const img = h("img", { alt: "", width: 76, height: 76 });
    const button = h(
      "button",
      { type: "button", class: "frame", dataset: { step: frame.step } },
      img,
      h("span", { class: "visually-hidden" }, "Show the preview of "),
      h("span", {}, `step ${frame.step}`),
      h("span", { class: "visually-hidden" }, ", score "),
      h(
        "span",
        { class: "frame-score", dataset: { decision: frame.decision } },
        score(frame.score),
      ),
    );
    button.onclick = () => this.onSelect(frame.step);
    const li = h("li", { dataset: { step: frame.step } }, button);
    const item = { li, button, img, preview: null, loaded: false, near: false };
    this.items.set(frame.step, item);
    return item;
  }

  visible(entries) {
    for (const entry of entries) {
      const item = this.items.get(Number(entry.target.dataset.step));
      if (!item) continue;
      item.near = entry.isIntersecting;
      if (item.near) this.load(item);
      else this.unload(item);
    }
  }

  async load(item) {
    if (item.loaded || !item.preview) return;
    item.loaded = true;
    const preview = item.preview;
    try {
      const url = await this.source(preview);
      if (!item.loaded) return; // it left the view meanwhile
      item.img.src = url;
      item.img.classList.toggle("pixelated", preview.width <= 128);
    } catch {
      item.loaded = false; // try again when it next scrolls into view
    }
  }

  // A frame far from view lets its decoded image go (its source stays at hand to load again).
  unload(item) {
    if (!item.loaded) return;
    item.loaded = false;
    item.img.removeAttribute("src");
  }

  key(event) {
    const current = Number(event.target.closest?.("button.frame")?.dataset.step);
    if (Number.isNaN(current)) return;
    const step = frameAfterKey(this.frames, current, event.key);
    if (step === null) return;
    event.preventDefault();
    const item = this.items.get(step);
    for (const other of this.items.values()) other.button.tabIndex = -1;
    item.button.tabIndex = 0;
    item.button.focus();
    item.li.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  showPlaceholder(text) {
    if (!this.placeholder) {
      this.placeholder = h("li", { class: "muted strip-placeholder" });
      this.list.prepend(this.placeholder);
    }
    this.placeholder.textContent = text;
  }

  hidePlaceholder() {
    this.placeholder?.remove();
    this.placeholder = null;
  }

  destroy() {
    this.observer.disconnect();
  }
}
