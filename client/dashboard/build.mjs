// Builds the dashboard into dist/: one bundled module (app.js), its stylesheet (app.css, uPlot's
// and ours) and index.html. `node build.mjs --watch` rebuilds on every change.

import { copyFile, mkdir, rm } from "node:fs/promises";
import * as esbuild from "esbuild";

const watch = process.argv.includes("--watch");
const options = {
  entryPoints: { app: "src/main.js" },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: !watch,
  sourcemap: true,
  outdir: "dist",
  logLevel: "info",
  legalComments: "linked",
};

await rm("dist", { recursive: true, force: true });
await mkdir("dist");
await copyFile("src/index.html", "dist/index.html");
if (watch) {
  await (await esbuild.context(options)).watch();
} else {
  await esbuild.build(options);
}
