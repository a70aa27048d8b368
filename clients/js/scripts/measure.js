// Prints the package's figures: its size minified and gzipped (the whole package, bundled as
// an app would), and a wake's cost against the real proxy and origin (see test/harness.js).
//
//   npm run measure        (DATABASE_URL: use that Postgres; else pushproxy runs its own)
import { PushProxyEventSource } from "../dist/index.js";
import { startStack, measureWake, bundledSize } from "../test/harness.js";

const { min, gzip } = await bundledSize();
console.log(`size: ${min} bytes minified, ${gzip} bytes minified+gzipped (goal: at most 6144)`);
const sw = await bundledSize("sw");
console.log(`sw size (pushproxy-client/sw): ${sw.min} bytes minified, ${sw.gzip} bytes minified+gzipped`);

const stack = await startStack({ originArgs: ["--rate", "0"] });
try {
  for (const n of [100, 1000, 5000]) {
    const r = await measureWake(stack, n, PushProxyEventSource);
    if (r.dispatched.join() !== r.emitted.join()) throw new Error(`wake of ${n}: the events dispatched are not the events emitted`);
    const pages = r.requests["GET events"];
    console.log(`wake: ${n} events queued: ${pages} page request(s) + ${r.requests["DELETE /v1/streams"]} DELETE, ${r.ms.toFixed(0)} ms to dispatch them and take the stream back`);
  }
} finally {
  await stack.stop();
}
