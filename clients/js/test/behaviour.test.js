// The client's behaviour at the edges, against the real proxy and origin: gaps, process
// death, the proxy's failures (per status), close, and the browsers' automatic sleep/wake.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomUUID } from "node:crypto";
import { PushProxyEventSource, PushProxyError } from "../dist/index.js";
import { startStack, MemoryStorage, waitFor, EventSource, fcmToken } from "./harness.js";

const API_KEY = "key-behaviour";
let stack;

before(async () => {
  // No ticker: the test emits every event itself. A backlog of at most 20 events.
  stack = await startStack({ originArgs: ["--rate", "0"], proxyArgs: ["--max-backlog", "20", "--api-keys", API_KEY] });
});
after(() => stack?.stop());

/**
 * The push token of the device whose storage this is: a device keeps its secret in its
 * storage, so each storage stands for a device of its own.
 */
const devices = new WeakMap();
function tokenOf(storage) {
  if (!devices.has(storage)) devices.set(storage, fcmToken(`device-behaviour-${randomUUID()}`));
  return devices.get(storage);
}

/** A client and what its app sees: events and gaps in one timeline, and errors. */
function client(storage, options = {}) {
  const app = { timeline: [], errors: [], opens: 0 };
  const es = stack.track(
    new PushProxyEventSource(stack.eventsURL, {
      proxy: stack.proxyURL,
      push: { platform: "fcm", token: tokenOf(storage) },
      apiKey: API_KEY,
      EventSource,
      storage,
      ...options,
    }),
  );
  for (const type of ["snapshot", "marker", "gap"]) {
    es.addEventListener(type, (ev) => app.timeline.push(`${ev.type} ${ev.lastEventId}${type == "marker" ? " " + ev.data : ""}`));
  }
  es.addEventListener("error", (ev) => ev.error && app.errors.push(ev.error));
  es.onopen = () => app.opens++;
  return { es, app };
}

/** Emits n markers; answers the lines a client sees for them. */
async function emitMarkers(n, label) {
  const lines = [];
  for (let k = 0; k < n; k++) lines.push(`marker ${await stack.emit("marker", `${label} ${k}`)} ${label} ${k}`);
  return lines;
}

const keyOf = () => "pushproxy:" + stack.eventsURL;
/** The keys of storage but the device secret's (which outlives the streams). */
const streamKeys = (storage) => [...storage.map.keys()].filter((k) => !k.startsWith("pushproxy-device:"));
const storedStream = (storage) => JSON.parse(storage.map.get(keyOf()));

/** A client connected and past its snapshot, with one marker seen; answers its timeline's length. */
async function started(c) {
  await waitFor(() => c.app.timeline.length > 0, "the snapshot");
  const [first] = await emitMarkers(1, "awake");
  await waitFor(() => c.app.timeline.includes(first), "a marker while awake");
  return first.split(" ")[1];
}

/** Puts c to sleep and queues n markers (see queue). */
async function asleepWith(c, storage, n, label) {
  await c.es.sleep();
  return queue(storage, n, label);
}

/** Emits n markers while the stream in storage sleeps; answers their lines and the stream id once the proxy has them. */
async function queue(storage, n, label) {
  const queued = await emitMarkers(n, label);
  const { id } = storedStream(storage);
  const newest = queued.at(-1).split(" ")[1];
  await waitFor(async () => (await stack.stream(id)).newest_event_id === newest, `the proxy to queue ${label}`);
  return { queued, id };
}

/** Emits a marker and waits for c to see it live; answers its line (in a list). */
async function live(c, label = "live") {
  const lines = await emitMarkers(1, label);
  await waitFor(() => c.app.timeline.includes(lines[0]), `${label} marker`);
  return lines;
}

test("a backlog that overflowed while asleep is dispatched after a gap event", async () => {
  const storage = new MemoryStorage();
  const c = client(storage);
  const last = await started(c);
  const { queued } = await asleepWith(c, storage, 50, "asleep");
  const n = c.app.timeline.length;
  await c.es.wake();
  // The gap comes first, with the position it was noticed at; then the 20 newest events.
  const after = await live(c);
  assert.deepEqual(c.app.timeline.slice(n), [`gap ${last}`, ...queued.slice(-20), ...after]);
  assert.deepEqual(c.app.errors, []);
  c.es.close();
});

test("a new instance built from the same storage wakes where the dead one slept", async () => {
  const storage = new MemoryStorage();
  const first = client(storage);
  const last = await started(first);
  const { queued, id } = await asleepWith(first, storage, 3, "while dead");
  // The process dies: the first instance is never used again.

  const second = client(storage);
  await waitFor(() => second.es.sleeping, "the new instance to load its storage");
  assert.equal(second.es.lastEventId, last);
  assert.equal(second.es.readyState, PushProxyEventSource.CONNECTING);
  await second.es.wake();
  const after = await live(second);
  assert.deepEqual(second.app.timeline, [...queued, ...after], "no snapshot: the origin resumed after the backlog");
  assert.equal((await stack.stream(id)).state, "closed");
  assert.equal(second.app.opens, 1);
  assert.deepEqual(second.app.errors, []);
  second.es.close();
});

for (const [what, tamper, status, code] of [
  ["unknown (404)", (s) => ({ ...s, id: randomUUID() }), 404, "not-found"],
  ["no longer ours (401)", (s) => ({ ...s, token: "not-the-token" }), 401, "unauthorized"],
]) {
  test(`a stream ${what} at wake: an error, then the origin resumes after the last event`, async () => {
    const storage = new MemoryStorage();
    const first = client(storage);
    await started(first);
    const { queued } = await asleepWith(first, storage, 2, "asleep");
    storage.map.set(keyOf(), JSON.stringify(tamper(storedStream(storage))));

    const second = client(storage);
    await waitFor(() => second.es.sleeping, "the new instance to load its storage");
    await second.es.wake();
    assert.equal(second.app.errors.length, 1);
    const [err] = second.app.errors;
    assert.ok(err instanceof PushProxyError);
    assert.equal(err.status, status);
    assert.equal(err.code, code);
    const after = await live(second);
    assert.deepEqual(second.app.timeline, [...queued, ...after]);
    assert.deepEqual(streamKeys(storage), [], "the stream forgotten");
    second.es.close();
  });
}

test("a refused handoff (wrong API key): an error, and wake resumes the origin after the last event", async () => {
  const storage = new MemoryStorage();
  const c = client(storage, { apiKey: "wrong" });
  await started(c);
  await c.es.sleep();
  assert.ok(c.es.sleeping);
  assert.equal(c.app.errors.length, 1);
  assert.equal(c.app.errors[0].status, 401);
  assert.equal(c.app.errors[0].code, "unauthorized");
  const n = c.app.timeline.length;
  const missed = await emitMarkers(2, "not held");
  await c.es.wake();
  const after = await live(c);
  assert.deepEqual(c.app.timeline.slice(n), [...missed, ...after]);
  c.es.close();
});

/**
 * A front for the proxy that answers injected faults ({kind, status, headers}) to the first
 * requests of their kind ("POST /v1/streams", "GET events", "DELETE /v1/streams") and passes the
 * others through; it logs every request.
 */
async function front() {
  const faults = [];
  const log = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    const path = new URL(req.url, "http://front").pathname;
    const kind = `${req.method} ${path.endsWith("/events") ? "events" : "/v1/streams"}`;
    log.push({ kind, body, at: Date.now() });
    const i = faults.findIndex((f) => f.kind == kind);
    if (i >= 0) {
      const [f] = faults.splice(i, 1);
      res.writeHead(f.status, { "Content-Type": "application/problem+json", ...f.headers });
      res.end(JSON.stringify({ status: f.status, code: f.code ?? "unavailable", detail: "injected" }));
      return;
    }
    const headers = {};
    for (const h of ["authorization", "accept", "content-type"]) if (req.headers[h]) headers[h] = req.headers[h];
    const r = await fetch(stack.proxyURL + req.url, { method: req.method, headers, body: body || undefined });
    res.writeHead(r.status, { "Content-Type": r.headers.get("content-type") ?? "application/json" });
    res.end(Buffer.from(await r.arrayBuffer()));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, faults, log, close: () => server.close() };
}

test("503 and 429 are retried (Retry-After honoured); the handoff carries the options as given", async () => {
  const f = await front();
  try {
    const storage = new MemoryStorage();
    const headers = { Authorization: "Bearer origin-credential" };
    const wake = { urgent_events: ["marker"] };
    const c = client(storage, { proxy: f.url, headers, wake });
    const last = await started(c);
    f.faults.push({ kind: "POST /v1/streams", status: 503 }, { kind: "POST /v1/streams", status: 503, headers: { "Retry-After": "0" } });
    await c.es.sleep();
    const posts = f.log.filter((r) => r.kind == "POST /v1/streams");
    assert.equal(posts.length, 3);
    const body = JSON.parse(posts[2].body);
    // The device secret made before the first handoff, the same in each attempt.
    const secret = body.push?.device_secret;
    assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(storage.map.get(`pushproxy-device:fcm:${tokenOf(storage)}`), secret);
    for (const p of posts) assert.equal(JSON.parse(p.body).push.device_secret, secret);
    assert.deepEqual(body, {
      url: stack.eventsURL,
      last_event_id: last,
      headers,
      push: { platform: "fcm", token: tokenOf(storage), device_secret: secret },
      wake,
    });
    const { id } = storedStream(storage);
    assert.deepEqual((await stack.stream(id)).urgent_events, ["marker"]);

    const n = c.app.timeline.length;
    const { queued } = await queue(storage, 2, "asleep");
    f.faults.push({ kind: "GET events", status: 429, code: "throttled", headers: { "Retry-After": "1" } });
    f.log.length = 0;
    await c.es.wake();
    const pages = f.log.filter((r) => r.kind == "GET events");
    assert.equal(pages.length, 2);
    assert.ok(pages[1].at - pages[0].at >= 950, `waited ${pages[1].at - pages[0].at} ms for Retry-After: 1`);
    assert.equal(f.log.filter((r) => r.kind == "DELETE /v1/streams").length, 1);
    const after = await live(c);
    assert.deepEqual(c.app.timeline.slice(n), [...queued, ...after]);
    assert.deepEqual(c.app.errors, []);
    c.es.close();

    // A proxy that stays unavailable: five attempts, an error, and the origin at wake.
    const d = client(new MemoryStorage(), { proxy: f.url });
    await started(d);
    f.log.length = 0;
    for (let k = 0; k < 5; k++) f.faults.push({ kind: "POST /v1/streams", status: 503, headers: { "Retry-After": "0" } });
    await d.es.sleep();
    assert.equal(f.log.length, 5);
    assert.equal(d.app.errors.length, 1);
    assert.equal(d.app.errors[0].status, 503);
    const m = d.app.timeline.length;
    const missed = await emitMarkers(1, "unavailable");
    await d.es.wake();
    const after2 = await live(d);
    assert.deepEqual(d.app.timeline.slice(m), [...missed, ...after2]);
    d.es.close();
  } finally {
    f.close();
  }
});

test("close() while asleep takes the stream back and forgets it", async () => {
  const storage = new MemoryStorage();
  const c = client(storage);
  await started(c);
  await c.es.sleep();
  const { id } = storedStream(storage);
  c.es.close();
  assert.equal(c.es.readyState, PushProxyEventSource.CLOSED);
  await waitFor(async () => (await stack.stream(id)).state == "closed", "the stream to be taken back");
  await waitFor(() => streamKeys(storage).length == 0, "the storage to be cleared");
  const n = c.app.timeline.length;
  await c.es.wake(); // nothing: closed
  await emitMarkers(1, "after close");
  assert.equal(c.app.timeline.length, n);
});

test("auto: sleeps when the page is hidden, wakes when it is shown", async () => {
  const doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
  globalThis.document = doc;
  try {
    const storage = new MemoryStorage();
    const c = client(storage, { auto: true });
    await started(c);
    doc.visibilityState = "hidden";
    doc.dispatchEvent(new Event("visibilitychange"));
    await waitFor(() => storage.map.get(keyOf())?.includes('"token"'), "the handoff");
    assert.ok(c.es.sleeping);
    const { queued } = await queue(storage, 2, "hidden");
    const n = c.app.timeline.length;
    doc.visibilityState = "visible";
    doc.dispatchEvent(new Event("visibilitychange"));
    await waitFor(() => !c.es.sleeping, "the wake");
    const after = await live(c, "visible");
    assert.deepEqual(c.app.timeline.slice(n), [...queued, ...after]);

    // Frozen, then the process dies; a new page from storage that is visible wakes by itself.
    doc.dispatchEvent(new Event("freeze"));
    await waitFor(() => storage.map.get(keyOf())?.includes('"token"'), "the handoff at freeze");
    const queued2 = await emitMarkers(1, "frozen");
    const second = client(storage, { auto: true });
    await waitFor(() => second.app.timeline.length >= 1, "the backlog");
    await waitFor(() => !second.es.sleeping && second.es.readyState == PushProxyEventSource.OPEN, "the origin");
    const after2 = await live(second, "new page");
    assert.deepEqual(second.app.timeline, [...queued2, ...after2]);
    second.es.close();
  } finally {
    delete globalThis.document;
  }
});

test("a stream the operator closed while asleep: no gap, no error, the origin replays what was dropped", async () => {
  const storage = new MemoryStorage();
  const c = client(storage);
  await started(c);
  const { queued, id } = await asleepWith(c, storage, 3, "dropped");
  await stack.adminClose(id);
  const n = c.app.timeline.length;
  await c.es.handlePush({ pushproxy: { streams: { [id]: 3 }, total: 3 } });
  assert.equal(c.app.timeline.length, n, "nothing to fetch");
  await c.es.wake();
  const after = await live(c);
  assert.deepEqual(c.app.timeline.slice(n), [...queued, ...after]);
  assert.deepEqual(c.app.errors, []);
  c.es.close();
});

test("an origin without ids: the proxy's own ids stay inside; events show an empty lastEventId", async () => {
  // A minimal origin that sends data lines only, and remembers how each connect asked to resume.
  const connects = [];
  const streams = new Set();
  const origin = http.createServer((req, res) => {
    connects.push({ header: req.headers["last-event-id"] ?? null, query: new URL(req.url, "http://o").searchParams.get("last_event_id") });
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write(": hello\n\n");
    streams.add(res);
    req.on("close", () => streams.delete(res));
  });
  await new Promise((r) => origin.listen(0, "127.0.0.1", r));
  const send = (data) => {
    for (const s of streams) s.write(`data: ${data}\n\n`);
  };
  try {
    const url = `http://127.0.0.1:${origin.address().port}/feed`;
    const storage = new MemoryStorage();
    const seen = [];
    const es = stack.track(new PushProxyEventSource(url, { proxy: stack.proxyURL, apiKey: API_KEY, EventSource, storage }));
    es.onmessage = (ev) => seen.push([ev.data, ev.lastEventId]);
    await waitFor(() => es.readyState == PushProxyEventSource.OPEN, "the origin");
    send("awake");
    await waitFor(() => seen.length == 1, "an event while awake");
    await es.sleep();
    const { id } = JSON.parse(storage.map.get("pushproxy:" + url));
    await waitFor(() => streams.size == 1 && connects.length == 2, "the proxy to connect");
    send("a");
    send("b");
    await waitFor(async () => (await stack.stream(id)).backlog === 2, "a backlog of 2");
    await es.wake();
    await waitFor(() => connects.length == 3, "the reconnect to the origin");
    send("live");
    await waitFor(() => seen.length == 4, "a live event");
    assert.deepEqual(seen, [["awake", ""], ["a", ""], ["b", ""], ["live", ""]]);
    assert.equal(es.lastEventId, "");
    // Nobody asked the origin to resume from an id it never gave.
    assert.deepEqual(connects, Array(3).fill({ header: null, query: null }));
    es.close();
  } finally {
    for (const s of streams) s.destroy();
    origin.close();
  }
});

test("a handler that throws is reported, as a listener's would be, and the backlog goes on", async () => {
  const storage = new MemoryStorage();
  const c = client(storage);
  await started(c);
  const messages = [];
  c.es.onmessage = (ev) => {
    messages.push(ev.data);
    if (ev.data == "throws") throw new Error("the app's handler failed");
  };
  await c.es.sleep();
  const ids = [];
  for (const data of ["before", "throws", "after"]) ids.push(await stack.emit("", data));
  const { id } = storedStream(storage);
  await waitFor(async () => (await stack.stream(id)).newest_event_id === ids.at(-1), "the proxy to queue them");
  // The exception is reported asynchronously, as uncaught (node:test's own handler set aside).
  const runner = process.listeners("uncaughtException");
  process.removeAllListeners("uncaughtException");
  const reported = [];
  process.on("uncaughtException", (e) => reported.push(e.message));
  try {
    await c.es.wake();
    await waitFor(() => reported.length == 1, "the report");
  } finally {
    process.removeAllListeners("uncaughtException");
    for (const l of runner) process.on("uncaughtException", l);
  }
  assert.deepEqual(messages, ["before", "throws", "after"]);
  assert.deepEqual(reported, ["the app's handler failed"]);
  assert.deepEqual(c.app.errors, []);
  assert.equal((await stack.stream(id)).state, "closed");
  c.es.close();
});
