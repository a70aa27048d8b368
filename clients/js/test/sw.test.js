// pushproxy-client/sw against the real proxy: what the service worker fetches is kept in
// storage for the page, acknowledged at the proxy, and dispatched by the page exactly once, in
// order, whether the page takes it when the worker tells it (handlePush) or when it wakes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { PushProxyEventSource } from "../dist/index.js";
import { fetchBacklogs } from "../dist/sw.js";
import { startStack, MemoryStorage, waitFor, EventSource, fcmToken } from "./harness.js";

let stack;
before(async () => {
  stack = await startStack({ originArgs: ["--rate", "0"], proxyArgs: ["--max-backlog", "20"] });
});
after(() => stack?.stop());

/** A storage the service worker can list (as idbStorage() is). */
class ListableMemoryStorage extends MemoryStorage {
  async keys() {
    return [...this.map.keys()];
  }
}

/** A page's client, asleep, and what its app sees. */
async function asleep(storage) {
  const seen = [];
  const es = stack.track(new PushProxyEventSource(stack.eventsURL, { proxy: stack.proxyURL, push: { platform: "fcm", token: fcmToken("sw-" + randomUUID()) }, EventSource, storage, wake: { urgent_events: ["alert"] } }));
  for (const type of ["snapshot", "marker", "alert", "gap"]) es.addEventListener(type, (ev) => seen.push(`${ev.type} ${ev.lastEventId} ${ev.data}`));
  const errors = [];
  es.addEventListener("error", (ev) => ev.error && errors.push(ev.error));
  await waitFor(() => seen.length > 0, "the snapshot");
  await es.sleep();
  const { id } = JSON.parse(storage.map.get("pushproxy:" + stack.eventsURL));
  return { es, seen, errors, id };
}

/** Emits markers (and types) while asleep; answers the lines the app must see, once queued. */
async function queue(id, types) {
  const lines = [];
  for (const [k, type] of types.entries()) {
    const data = `${type} ${k} ${randomUUID().slice(0, 8)}`;
    lines.push(`${type} ${await stack.emit(type, data)} ${data}`);
  }
  const newest = lines.at(-1).split(" ")[1];
  await waitFor(async () => (await stack.stream(id)).newest_event_id === newest, "the proxy to queue them");
  return lines;
}

test("the worker keeps what it fetched for the page and acknowledges it; the page dispatches it once, in order", async () => {
  const storage = new ListableMemoryStorage();
  const c = await asleep(storage);
  const before = c.seen.length;
  const first = await queue(c.id, ["marker", "marker", "alert", "marker"]);

  // A push naming another stream fetches nothing.
  assert.deepEqual(await fetchBacklogs({ pushproxy: { streams: { other: 1 }, total: 1 } }, { storage }), {});

  const got = await fetchBacklogs({ pushproxy: { streams: { [c.id]: 4 }, total: 4 } }, { storage });
  const key = "pushproxy:" + stack.eventsURL;
  assert.deepEqual(Object.keys(got), [key]);
  assert.equal(got[key].id, c.id);
  assert.deepEqual(got[key].urgent, ["alert"]);
  assert.deepEqual(got[key].events.map((e) => `${e.event} ${e.id} ${e.data}`), first);
  // Kept for the page, and acknowledged at the proxy: nothing is queued any more.
  assert.equal(JSON.parse(storage.map.get(key)).inbox.length, 4);
  assert.equal((await stack.stream(c.id)).backlog, 0);
  // A second push (say, a retried one) finds nothing new: no event twice.
  assert.deepEqual((await fetchBacklogs(undefined, { storage }))[key].events, []);
  assert.equal(c.seen.length, before, "the page has not dispatched anything yet");

  // The worker tells the page (BroadcastChannel): the page takes what was kept.
  await c.es.handlePush();
  assert.deepEqual(c.seen.slice(before), first);
  assert.equal(JSON.parse(storage.map.get(key)).inbox, undefined);

  // More while asleep, fetched by the worker, then the page wakes: kept events, then the rest.
  const second = await queue(c.id, ["marker", "marker"]);
  await fetchBacklogs(undefined, { storage });
  const third = await queue(c.id, ["marker"]);
  await c.es.wake();
  assert.deepEqual(c.seen.slice(before), [...first, ...second, ...third]);
  assert.deepEqual(c.errors, []);
});

test("a backlog that overflowed: the worker keeps the gap, and the page reports it before the events", async () => {
  const storage = new ListableMemoryStorage();
  const c = await asleep(storage);
  const before = c.seen.length;
  const last = c.es.lastEventId;
  const lines = await queue(c.id, Array(30).fill("marker"));
  await fetchBacklogs(undefined, { storage });
  await c.es.wake();
  assert.deepEqual(c.seen.slice(before), [`gap ${last} `, ...lines.slice(-20)]);
});
