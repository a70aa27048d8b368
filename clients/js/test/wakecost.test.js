// A wake's cost: a backlog of up to 1,000 events is one page request (then the DELETE that
// takes the stream back).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { PushProxyEventSource } from "../dist/index.js";
import { startStack, measureWake } from "./harness.js";

let stack;
before(async () => {
  stack = await startStack({ originArgs: ["--rate", "0"] });
});
after(() => stack?.stop());

for (const n of [1000, 1001]) {
  test(`a wake with ${n} events queued`, async () => {
    const r = await measureWake(stack, n, PushProxyEventSource);
    assert.deepEqual(r.dispatched, r.emitted, "every event once, in order");
    assert.deepEqual(r.requests, { "GET events": n <= 1000 ? 1 : 2, "DELETE /v1/streams": 1 });
    console.log(`wake of ${n} events: ${r.requests["GET events"]} page request(s) + 1 DELETE, ${r.ms.toFixed(0)} ms`);
  });
}
