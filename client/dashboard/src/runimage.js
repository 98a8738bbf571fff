// The run page's large image: the final image, or the preview chosen in the filmstrip, or the
// latest one; a larger view of it in a dialog; and its PNG to download with the run's
// parameters written inside.

import { fill, h, score } from "./dom.js";
import { withTextChunks } from "./png.js";
import { parametersText } from "./runfacts.js";

/** URLs an <img> shows for previews: a live one's own, a kept one's from the HTTP API. */
export class ImageSources {
  constructor(app) {
    this.app = app;
    this.objectUrls = [];
    this.cache = new Map();
  }

  of(preview) {
    if (!preview.stored) return Promise.resolve(preview.url);
    if (!this.cache.has(preview.url)) {
      const source = this.app.api.imageSource(preview.url).then((url) => {
        if (url.startsWith("blob:")) this.objectUrls.push(url);
        return url;
      });
      source.catch(() => this.cache.delete(preview.url));
      this.cache.set(preview.url, source);
    }
    return this.cache.get(preview.url);
  }

  dispose() {
    for (const url of this.objectUrls) URL.revokeObjectURL(url);
    this.objectUrls = [];
  }
}

export function drawImage(view, run, strip, images, redraw) {
  const selected =
    strip.selected !== null ? run.checks.find((c) => c.step === strip.selected && c.preview) : null;
  let image;
  let caption;
  let id;
  let alt;
  if (selected) {
    image = selected.preview;
    caption = [
      `Preview at step ${selected.step} · score ${score(selected.score)} `,
      h(
        "button",
        {
          type: "button",
          class: "link",
          onclick: () => {
            strip.selected = null;
            redraw();
          },
        },
        "Back to the latest",
      ),
    ];
    id = `preview-${selected.step}`;
    alt = `the model's estimate of the final image at step ${selected.step}`;
  } else if (run.image) {
    image = run.image;
    const at = run.finished ? ` after ${run.finished.stepsRun} steps` : "";
    const download = h(
      "a",
      { id: "download-png", href: run.image.url, download: `stepwatch-${run.runId}.png` },
      "Download PNG",
    );
    if (run.parameters) withParameters(download, run, images);
    caption = [`Final image${at} · score ${score(run.finished?.finalScore)} · `, download];
    id = "final";
    alt = "the run's final image";
  } else if (run.latestPreview) {
    const latest = run.latestPreview;
    image = latest.preview;
    const ended =
      run.state === "finished"
        ? "No final image: the run ended without one. Last preview"
        : "Latest preview";
    caption = [`${ended} · step ${latest.step} · score ${score(latest.score)}`];
    id = `preview-${latest.step}${run.state === "finished" ? "-ended" : ""}`;
    alt = `the model's estimate of the final image at step ${latest.step}`;
  } else {
    const waiting =
      run.state === "finished"
        ? "No final image: the run ended without one."
        : `The first preview comes at step ${run.parameters?.check_interval ?? "…"}.`;
    if (view.image.dataset.shown !== "none") {
      view.image.dataset.shown = "none";
      fill(view.image, h("div", { class: "image-placeholder" }, waiting));
    }
    return;
  }
  if (view.image.dataset.shown === id) return;
  view.image.dataset.shown = id;
  const img = h("img", {
    width: image.width,
    height: image.height,
    class: image.width <= 128 ? "pixelated" : "",
    id: id === "final" ? "final-image" : "latest-preview",
    alt,
  });
  images.of(image).then(
    (url) => (img.src = url),
    () => {},
  );
  const enlarge = h(
    "button",
    { type: "button", class: "enlarge", title: "Show it large", "aria-label": `Enlarge ${alt}` },
    img,
  );
  enlarge.onclick = () => showLarge(view.enlarged, img, alt, caption);
  fill(view.image, enlarge, h("figcaption", {}, caption));
}

// The image as large as the window allows, in a dialog (Escape or Close closes it).
function showLarge(dialog, img, alt, caption) {
  const large = h("img", { src: img.src, alt, class: img.className, id: "enlarged-image" });
  const close = h("button", { type: "button", class: "secondary", autofocus: true }, "Close");
  close.onclick = () => dialog.close();
  fill(
    dialog,
    large,
    h(
      "div",
      { class: "enlarged-foot" },
      h("p", {}, alt.charAt(0).toUpperCase() + alt.slice(1)),
      close,
    ),
  );
  dialog.onclick = (event) => {
    if (event.target === dialog) dialog.close();
  };
  dialog.showModal();
}

// The downloaded PNG carries the run's parameters as text ("parameters", as image tools
// write them, and "stepwatch" as JSON), so the file remembers how it was made.
async function withParameters(link, run, images) {
  try {
    const response = await fetch(await images.of(run.image));
    const png = new Uint8Array(await response.arrayBuffer());
    const tagged = withTextChunks(png, [
      ["parameters", parametersText(run.parameters)],
      ["stepwatch", JSON.stringify({ run_id: run.runId, ...run.parameters })],
    ]);
    const url = URL.createObjectURL(new Blob([tagged], { type: "image/png" }));
    images.objectUrls.push(url);
    link.href = url;
    link.dataset.parameters = "true";
  } catch {
    // The plain image still downloads.
  }
}
