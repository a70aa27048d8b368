// The real thing, on this machine: pushproxy's Go binaries built from this repository, a
// fresh Postgres database (from DATABASE_URL, else a cluster pushproxy runs itself), the
// reference origin and a proxy on loopback ports.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, chmodSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { randomBytes } from "node:crypto";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";
import pg from "pg";
import { EventSource } from "eventsource";

const repo = fileURLToPath(new URL("../../..", import.meta.url));
export const ADMIN_TOKEN = "admin-" + randomBytes(8).toString("hex");

/** Builds cmd/pushproxy and cmd/origin into a new directory (go's cache makes it quick). */
function buildBinaries(dir) {
  const env = { ...process.env, PATH: `${process.env.PATH}:/usr/local/go/bin` };
  execFileSync("go", ["build", "-o", dir + "/", "./cmd/pushproxy", "./cmd/origin"], { cwd: repo, env, stdio: "inherit" });
}

/** Runs a binary and answers once a line of its output matches re (with the match). */
function startProcess(bin, args, re, what) {
  // The environment without pushproxy's and the origin's variables: only the flags count.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(PUSHPROXY_|ORIGIN_|DATABASE_URL$)/.test(k)));
  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const output = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${what} did not start in 120 s`)), 120_000);
    const fail = (err) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${err.message}\n${output.join("\n")}`));
    };
    child.on("exit", (code) => fail(new Error(`${what} exited (${code})`)));
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        if (output.length < 200) output.push(line);
        if (process.env.PUSHPROXY_TEST_VERBOSE) console.error(`[${what}] ${line}`);
        const m = line.match(re);
        if (m) {
          clearTimeout(timer);
          child.removeAllListeners("exit");
          resolve({ child, match: m, output });
        }
      });
    }
  });
}

function stopProcess(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/**
 * Starts Postgres (a fresh database), the reference origin and pushproxy.
 * originArgs and proxyArgs are added to their command lines.
 */
export async function startStack({ originArgs = [], proxyArgs = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "pushproxy-client-test-"));
  chmodSync(dir, 0o755); // a local Postgres runs as the postgres user, which must reach it
  const cleanups = [() => rmSync(dir, { recursive: true, force: true })];
  // Clients a test made (see track), closed before the proxy stops, even when a test failed.
  const clients = [];
  const stop = async () => {
    for (const f of cleanups.reverse()) await f();
  };
  try {
    buildBinaries(join(dir, "bin"));
    let dbArgs;
    if (process.env.DATABASE_URL) {
      const name = "pushproxy_js_" + randomBytes(6).toString("hex");
      const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${name}`);
      await admin.end();
      cleanups.push(async () => {
        const c = new pg.Client({ connectionString: process.env.DATABASE_URL });
        await c.connect();
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await c.end();
      });
      const u = new URL(process.env.DATABASE_URL);
      u.pathname = "/" + name;
      // An external database needs a key file for the forwarded credentials.
      const keys = join(dir, "secret-keys.json");
      execFileSync(join(dir, "bin", "pushproxy"), ["keys", "generate", "--secret-key-file", keys], { stdio: "ignore" });
      dbArgs = ["--database-url", u.href, "--secret-key-file", keys];
    } else {
      dbArgs = ["--data-dir", join(dir, "pg")];
    }

    const origin = await startProcess(
      join(dir, "bin", "origin"),
      ["--listen", "127.0.0.1:0", "--allow-emit", "--retry", "50ms", "--heartbeat", "1s", "--history", "100000", ...originArgs],
      /listening on (http:\/\/\S+)/,
      "origin",
    );
    cleanups.push(() => stopProcess(origin.child));
    const originURL = origin.match[1];

    const proxy = await startProcess(
      join(dir, "bin", "pushproxy"),
      ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...dbArgs, "--upstream-allow", "127.0.0.1", "--admin-token", ADMIN_TOKEN, "--shutdown-timeout", "5s", ...proxyArgs],
      /msg="pushproxy serving" addr=(\S+)/,
      "pushproxy",
    );
    cleanups.push(() => stopProcess(proxy.child));
    cleanups.push(() => clients.forEach((es) => es.close()));
    const proxyURL = "http://" + proxy.match[1];

    return {
      proxyURL,
      originURL,
      /** The origin's SSE URL. */
      eventsURL: originURL + "/events",
      stop,
      /** Registers a client to be closed when the stack stops; answers it. */
      track(es) {
        clients.push(es);
        return es;
      },
      /** Publishes one event at the origin; answers its id. */
      async emit(type, data) {
        const res = await fetch(`${originURL}/emit?type=${encodeURIComponent(type)}&data=${encodeURIComponent(data)}`, { method: "POST" });
        if (!res.ok) throw new Error(`emit: ${res.status} ${await res.text()}`);
        return (await res.json()).id;
      },
      /** The proxy's view of a stream (admin API). */
      async stream(id) {
        const res = await fetch(`${proxyURL}/v1/admin/streams/${id}`, { headers: { Authorization: "Bearer " + ADMIN_TOKEN } });
        if (!res.ok) throw new Error(`stream ${id}: ${res.status} ${await res.text()}`);
        return res.json();
      },
      /** Closes a stream as an operator does. */
      async adminClose(id) {
        const res = await fetch(`${proxyURL}/v1/admin/streams/${id}/close`, { method: "POST", headers: { Authorization: "Bearer " + ADMIN_TOKEN } });
        if (!res.ok) throw new Error(`close ${id}: ${res.status} ${await res.text()}`);
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * An FCM registration token of the shape the proxy takes (100 to 4096 letters, digits, `_`, `-`
 * and `:`), distinct per name.
 */
export function fcmToken(name) {
  return (name + ":").padEnd(152, "x");
}

/** An async key-value store in memory, standing for a device's storage that outlives a process. */
export class MemoryStorage {
  map = new Map();
  async getItem(k) {
    return this.map.get(k) ?? null;
  }
  async setItem(k, v) {
    this.map.set(k, v);
  }
  async removeItem(k) {
    this.map.delete(k);
  }
}

/** A fetch that counts requests per kind ("POST /v1/streams", "GET events", "DELETE /v1/streams"). */
export function countingFetch() {
  const counts = {};
  const f = (input, init = {}) => {
    const u = new URL(String(input));
    const kind = (init.method ?? "GET") + (u.pathname.endsWith("/events") ? " events" : " /v1/streams");
    counts[kind] = (counts[kind] ?? 0) + 1;
    return fetch(input, init);
  };
  return { fetch: f, counts };
}

/** Waits until cond() is truthy, checking every 20 ms; fails after ms. */
export async function waitFor(cond, what, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Reads the origin directly from after `after` until the event with id `until`, listening
 * for `types`: what the origin emitted, to compare with what the app saw.
 */
export function readOrigin(eventsURL, after, until, types) {
  return new Promise((resolve, reject) => {
    const got = [];
    const es = new EventSource(`${eventsURL}?last_event_id=${encodeURIComponent(after)}`);
    const timer = setTimeout(() => {
      es.close();
      reject(new Error(`the origin's events up to ${until} did not come (got ${got.length})`));
    }, 60_000);
    let done = false;
    const on = (ev) => {
      if (done) return; // events of the chunk being parsed still come after close()
      got.push({ type: ev.type, id: ev.lastEventId, data: ev.data });
      if (ev.lastEventId === until) {
        done = true;
        clearTimeout(timer);
        es.close();
        resolve(got);
      }
    };
    for (const t of types) es.addEventListener(t, on);
  });
}

export { EventSource };

/**
 * The cost of a wake: a client sleeps, the origin emits n events, the proxy queues them, and
 * the client wakes. Answers the requests the wake made by kind, its duration, and the events
 * the app saw during it (to check). stack's origin must have no ticker (--rate 0).
 */
export async function measureWake(stack, n, PushProxyEventSource) {
  const storage = new MemoryStorage();
  const { fetch, counts } = countingFetch();
  const es = stack.track(new PushProxyEventSource(stack.eventsURL, { proxy: stack.proxyURL, push: { platform: "fcm", token: fcmToken("device-wake-cost-" + randomBytes(6).toString("hex")) }, EventSource, fetch, storage }));
  const seen = [];
  es.addEventListener("marker", (ev) => seen.push(ev.lastEventId));
  es.addEventListener("snapshot", (ev) => seen.push(ev.lastEventId));
  await waitFor(() => seen.length > 0, "the snapshot");
  await es.sleep();
  const { id } = JSON.parse(storage.map.get("pushproxy:" + stack.eventsURL));
  const emitted = [];
  for (let k = 0; k < n; k += 50) {
    emitted.push(...(await Promise.all(Array.from({ length: Math.min(50, n - k) }, (_, j) => stack.emit("marker", `event ${k + j}`)))));
  }
  emitted.sort((a, b) => a - b);
  await waitFor(async () => (await stack.stream(id)).backlog === n, `a backlog of ${n}`, 60_000);
  for (const k of Object.keys(counts)) delete counts[k];
  const before = seen.length;
  const t0 = performance.now();
  await es.wake();
  const ms = performance.now() - t0;
  const dispatched = seen.slice(before);
  es.close();
  return { requests: { ...counts }, ms, dispatched, emitted };
}

/**
 * The size of an entry of the package (index: the main one; sw: the service-worker helper),
 * bundled as an app would: minified, and minified and gzipped.
 */
export async function bundledSize(entry = "index") {
  const out = await build({
    entryPoints: [fileURLToPath(new URL(`../src/${entry}.ts`, import.meta.url))],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "neutral",
    write: false,
  });
  const min = out.outputFiles[0].contents;
  return { min: min.length, gzip: gzipSync(min, { level: 9 }).length };
}
