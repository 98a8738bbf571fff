// The run page's input images: the init image, mask and control image an image-to-image,
// inpainting or ControlNet run was started with, shown beside its preview. `inputImages` is the
// state (node --test); `drawInputs` renders it.

import { fill, h } from "./dom.js";

const ROLES = [
  ["image", "Init image"],
  ["mask", "Mask"],
  ["control_image", "Control image"],
];

/** The input images `parameters` name: `[{role, label, id, url}]`, in the order of `start`. */
export function inputImages(parameters) {
  if (!parameters) return [];
  return ROLES.filter(([role]) => typeof parameters[role] === "string").map(([role, label]) => ({
    role,
    label,
    id: parameters[role],
    url: `/api/uploads/${encodeURIComponent(parameters[role])}`,
  }));
}

/** Show the run's input images in `box` (hidden when it has none); redraws only on change. */
export function drawInputs(box, run, images) {
  const inputs = inputImages(run.parameters);
  const key = inputs.map((input) => `${input.role}=${input.id}`).join(",");
  if (box.dataset.shown === key) return;
  box.dataset.shown = key;
  box.hidden = inputs.length === 0;
  fill(
    box,
    inputs.map((input) => {
      const img = h("img", {
        id: `input-${input.role}`,
        alt: `the run's ${input.label.toLowerCase()}`,
      });
      images.of({ stored: true, url: input.url }).then(
        (url) => (img.src = url),
        () => {},
      );
      return h("figure", { class: "input-image" }, img, h("figcaption", {}, input.label));
    }),
  );
}
