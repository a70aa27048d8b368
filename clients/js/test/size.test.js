// The package stays small: at most 6 KiB minified and gzipped, bundled as an app would.
import { test } from "node:test";
import assert from "node:assert/strict";
import { bundledSize } from "./harness.js";

test("minified and gzipped, the package is at most 6 KiB", async () => {
  const { min, gzip } = await bundledSize();
  console.log(`size: ${min} bytes minified, ${gzip} bytes minified+gzipped`);
  assert.ok(gzip <= 6144, `${gzip} bytes`);
});

test("minified and gzipped, the service-worker helper (pushproxy-client/sw) is at most 3 KiB", async () => {
  const { min, gzip } = await bundledSize("sw");
  console.log(`sw size: ${min} bytes minified, ${gzip} bytes minified+gzipped`);
  assert.ok(gzip <= 3072, `${gzip} bytes`);
});

test("the package has no runtime dependencies", async () => {
  const { default: pkg } = await import("../package.json", { with: { type: "json" } });
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.peerDependencies, undefined);
});
