// Device secrets (README "Device secrets: the flow for apps"): the client makes one before the
// device's first handoff, keeps it in storage by push address, and presents it in every handoff.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { PushProxyEventSource } from "../dist/index.js";
import { startStack, MemoryStorage, waitFor, EventSource, fcmToken } from "./harness.js";

let stack;
before(async () => {
  stack = await startStack({ originArgs: ["--rate", "0"] });
});
after(() => stack?.stop());

/** A client of the device with this push token and storage; answers it and its proxy errors. */
function client(token, storage, push = {}) {
  const errors = [];
  const es = stack.track(new PushProxyEventSource(stack.eventsURL, { proxy: stack.proxyURL, push: { platform: "fcm", token, ...push }, EventSource, storage }));
  es.addEventListener("error", (ev) => ev.error && errors.push(ev.error));
  return { es, errors };
}

const held = (storage) => JSON.parse(storage.map.get("pushproxy:" + stack.eventsURL) ?? "null");

test("the device secret is made before the first handoff, kept by push address, and presented by every handoff, also after a process death", async () => {
  const token = fcmToken("device-secret-" + randomUUID());
  const storage = new MemoryStorage();
  const c = client(token, storage);
  await waitFor(() => c.es.readyState == 1, "the origin");
  await c.es.sleep();
  const secret = storage.map.get("pushproxy-device:fcm:" + token);
  assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
  assert.ok(held(storage).id, "the first handoff succeeded");
  for (let i = 0; i < 3; i++) {
    await c.es.wake();
    await c.es.sleep();
    assert.ok(held(storage).id, `handoff ${i + 2} succeeded`);
  }
  c.es.close();
  assert.deepEqual(c.errors, []);

  // A new process with the same storage (a copy: no state shared in memory) is the same device.
  const copy = new MemoryStorage();
  copy.map.set("pushproxy-device:fcm:" + token, secret);
  const d = client(token, copy);
  await waitFor(() => d.es.readyState == 1, "the origin");
  await d.es.sleep();
  assert.deepEqual(d.errors, []);
  assert.ok(held(copy).id);
  d.es.close();

  // A device that lost its secret cannot take the push token over: 403 device-secret-mismatch.
  const lost = new MemoryStorage();
  const e = client(token, lost);
  await waitFor(() => e.es.readyState == 1, "the origin");
  await e.es.sleep();
  assert.equal(e.errors.length, 1);
  assert.equal(e.errors[0].status, 403);
  assert.equal(e.errors[0].code, "device-secret-mismatch");
  assert.equal(held(lost).id, undefined, "nothing held");
  e.es.close();
});

test("a device secret given in push is sent as it is, and none is stored", async () => {
  const token = fcmToken("device-own-" + randomUUID());
  const secret = randomBytes(32).toString("base64url");
  const storage = new MemoryStorage();
  for (let i = 0; i < 2; i++) {
    const c = client(token, storage, { device_secret: secret });
    await waitFor(() => c.es.readyState == 1, "the origin");
    await c.es.sleep();
    assert.deepEqual(c.errors, []);
    assert.ok(held(storage).id);
    await c.es.wake();
    c.es.close();
  }
  assert.equal(storage.map.get("pushproxy-device:fcm:" + token), undefined);
  // Another secret for the same token is refused.
  const other = client(token, new MemoryStorage(), { device_secret: randomBytes(32).toString("base64url") });
  await waitFor(() => other.es.readyState == 1, "the origin");
  await other.es.sleep();
  assert.equal(other.errors[0]?.code, "device-secret-mismatch");
  other.es.close();
});

test("without storage the secret lives as long as the process: every handoff of its instances presents it", async () => {
  const token = fcmToken("device-nostorage-" + randomUUID());
  for (let i = 0; i < 2; i++) {
    const c = client(token, null);
    await waitFor(() => c.es.readyState == 1, "the origin");
    await c.es.sleep();
    await c.es.wake();
    await c.es.sleep();
    assert.deepEqual(c.errors, []);
    c.es.close();
  }
});
