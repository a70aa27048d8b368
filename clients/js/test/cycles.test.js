// 20 sleep/wake cycles against the real proxy and the real reference origin: the app's
// listeners see every event the origin emitted exactly once, in order, with its id and type.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { PushProxyEventSource } from "../dist/index.js";
import { startStack, MemoryStorage, waitFor, readOrigin, EventSource, fcmToken } from "./harness.js";

const TYPES = ["snapshot", "add", "remove", "update", "message", "marker"];
let stack;

before(async () => {
  // 100 events a second, and every origin connection (the client's and the proxy's) dropped
  // after 37 events: both resume with Last-Event-ID all along.
  stack = await startStack({ originArgs: ["--rate", "100", "--drop-every", "37"] });
});
after(() => stack?.stop());

/** A client as an app makes one, recording what its listeners see. */
function client(storage, app) {
  const es = stack.track(
    new PushProxyEventSource(stack.eventsURL, {
      proxy: stack.proxyURL,
      push: { platform: "fcm", token: fcmToken("device-cycles") },
      EventSource,
      storage,
    }),
  );
  for (const type of TYPES) es.addEventListener(type, (ev) => app.seen.push({ type: ev.type, id: ev.lastEventId, data: ev.data }));
  es.onmessage = (ev) => app.onmessage.push(ev.lastEventId);
  es.addEventListener("error", (ev) => ev.error && app.errors.push(ev.error));
  es.addEventListener("gap", (ev) => app.gaps.push(ev.lastEventId));
  return es;
}

test("20 sleep/wake cycles: every origin event exactly once, in order, with its id and type", async () => {
  const storage = new MemoryStorage();
  const app = { seen: [], onmessage: [], errors: [], gaps: [], log: [] };
  let es = client(storage, app);
  await waitFor(() => app.seen.length > 0, "the first event");
  assert.equal(app.seen[0].type, "snapshot");
  assert.equal(es.readyState, PushProxyEventSource.OPEN);
  const start = app.seen[0].id;
  const storedStream = () => JSON.parse(storage.map.get("pushproxy:" + stack.eventsURL)).id;

  let pushes = 0;
  let deaths = 0;
  for (let i = 0; i < 20; i++) {
    // Awake: events come straight from the origin.
    let n = app.seen.length;
    await waitFor(() => app.seen.length >= n + 10, `events while awake (cycle ${i})`);

    // Going to sleep while an event is being emitted (untyped on even cycles: onmessage).
    const emitted = stack.emit(i % 2 ? "marker" : "", `before sleep ${i}`);
    await es.sleep();
    await emitted;
    assert.ok(es.sleeping);
    assert.equal(es.readyState, PushProxyEventSource.CONNECTING);
    const id = storedStream();
    app.log.push(`cycle ${i}: slept after ${es.lastEventId}`);

    // Asleep: the proxy queues.
    await waitFor(async () => (await stack.stream(id)).backlog >= 10, `a backlog (cycle ${i})`);
    if (i % 4 == 1) {
      // A push while asleep: the backlog is dispatched, the stream stays with the proxy.
      n = app.seen.length;
      // The payload as each push service delivers it, one per such cycle.
      const counts = { streams: { [id]: 10 }, total: 10 };
      const payload = [
        { aps: { "content-available": 1 }, pushproxy: counts }, // APNs
        { pushproxy: JSON.stringify(counts) }, // FCM's data
        { data: { pushproxy: JSON.stringify(counts) }, from: "sender" }, // FCM's whole message
        JSON.stringify({ pushproxy: { streams: { other: 3 }, total: 13, omitted: 1 } }), // too many streams to list
        undefined, // a host that does not pass it on
      ][pushes];
      await es.handlePush(payload);
      assert.ok(app.seen.length >= n + 10, "handlePush dispatched the backlog");
      assert.ok(es.sleeping);
      pushes++;
      // A push that names other streams only fetches nothing.
      n = app.seen.length;
      await waitFor(async () => (await stack.stream(id)).backlog >= 5, `a backlog after the push (cycle ${i})`);
      await es.handlePush({ data: { pushproxy: JSON.stringify({ streams: { "another-stream": 1 }, total: 1 }) } });
      assert.equal(app.seen.length, n);
    }
    if (i % 4 == 3) {
      // The process dies asleep; the next one starts from storage (asleep, where it was).
      const last = es.lastEventId;
      es = client(storage, app);
      await waitFor(() => es.sleeping, "the new instance to load its storage");
      assert.equal(es.lastEventId, last);
      deaths++;
    }

    // Waking while an event is being emitted.
    const emitted2 = stack.emit("marker", `at wake ${i}`);
    await es.wake();
    await emitted2;
    app.log.push(`cycle ${i}: woke, last ${es.lastEventId}`);
    assert.ok(!es.sleeping);
    assert.equal((await stack.stream(id)).state, "closed", "the stream was taken back");
    assert.deepEqual([...storage.map.keys()], ["pushproxy-device:fcm:" + fcmToken("device-cycles")], "nothing but the device secret kept while awake");
  }

  const end = await stack.emit("marker", "end");
  await waitFor(() => app.seen.some((e) => e.id === end), "the last event");
  es.close();
  assert.equal(es.readyState, PushProxyEventSource.CLOSED);

  const got = app.seen.slice(1, app.seen.findIndex((e) => e.id === end) + 1);
  const want = await readOrigin(stack.eventsURL, start, end, TYPES);
  assert.deepEqual(app.errors, []);
  assert.deepEqual(app.gaps, []);
  if (got.length != want.length) {
    const ids = new Set(got.map((e) => e.id));
    console.log("missing:", want.filter((e) => !ids.has(e.id)).map((e) => e.id + " " + e.type).join(", "));
    const c = {};
    for (const e of got) c[e.id] = (c[e.id] ?? 0) + 1;
    console.log("doubled:", Object.keys(c).filter((k) => c[k] > 1).join(", "));
    console.log(app.log.join("\n"));
    console.log(JSON.stringify(got.slice(-30).map((e) => e.id + " " + e.type + " " + e.data.slice(0, 20))));
    console.log(end, JSON.stringify(want.slice(-30).map((e) => e.id + " " + e.type + " " + e.data.slice(0, 20))));
  }
  assert.equal(got.length, want.length);
  assert.deepEqual(got, want);
  // The origin's ids are consecutive: nothing is missing or doubled.
  got.forEach((e, k) => assert.equal(e.id, String(Number(start) + k + 1)));
  assert.deepEqual(
    app.onmessage.filter((id) => Number(id) <= Number(end)),
    got.filter((e) => e.type == "message").map((e) => e.id),
  );
  assert.ok(got.filter((e) => e.type == "message").length >= 10);
  assert.equal(pushes, 5);
  assert.equal(deaths, 5);
  console.log(`cycles: ${got.length} events over 20 sleep/wake cycles, ${pushes} pushes, ${deaths} process deaths`);
});
