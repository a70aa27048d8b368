// Builds the example into dist/ (or the directory given as --outdir=DIR): the page's script and
// the service worker, bundled with the pushproxy-client package from its sources (../../clients/js).
//
//   npm ci && npm run build      then serve dist/ (see README.md)
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const outdir = process.argv.find((a) => a.startsWith("--outdir="))?.slice(9) ?? here("dist");
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: { app: here("src/app.ts"), sw: here("src/sw.ts") },
  outdir,
  bundle: true,
  minify: true,
  format: "iife", // a classic service worker script: every browser with Web Push runs it
  target: "es2022",
  alias: {
    "pushproxy-client/sw": here("../../clients/js/src/sw.ts"),
    "pushproxy-client": here("../../clients/js/src/index.ts"),
  },
  logLevel: "warning",
});
copyFileSync(here("index.html"), outdir + "/index.html");
