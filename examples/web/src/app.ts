// The page: the reference ticker (pushproxy's cmd/origin, whose /events this page's server
// serves on the page's own origin), read through a PushProxyEventSource that sleeps through
// pushproxy when the page is hidden, with this browser's Web Push subscription as its push
// address. The service worker (sw.ts) fetches the backlog when the push comes; this page
// dispatches it when it is shown again, or at once when it is open (BroadcastChannel).
//
// Query parameters: proxy (the pushproxy base URL; default http://127.0.0.1:8080), vapid (the
// proxy's VAPID public key; default: asked of the proxy), events (the origin's SSE URL;
// default /events on this origin), subscribeTimeout (ms to wait for PushManager.subscribe,
// which never answers where no push service is reachable; default 10000).
import { PushProxyEventSource, idbStorage } from "pushproxy-client";

interface Seen {
  type: string;
  id: string;
  data: string;
}

/** What the page exposes, for people poking at it and for the browser test. */
const example = {
  es: undefined as PushProxyEventSource | undefined,
  /** Where the sleeping stream is kept: IndexedDB, which the service worker reads too. */
  storage: idbStorage(),
  /** Every event the app's listeners saw, in order. */
  seen: [] as Seen[],
  errors: [] as string[],
  subscription: undefined as PushSubscriptionJSON | undefined,
  /** Why PushManager.subscribe failed, when it did (no push service: headless browsers). */
  subscribeError: "",
  /** Set when subscribe failed: hand in a subscription made elsewhere (the browser test does). */
  provideSubscription: undefined as ((s: PushSubscriptionJSON) => void) | undefined,
};
(globalThis as any).example = example;

const q = new URLSearchParams(location.search);
const proxy = q.get("proxy") ?? "http://127.0.0.1:8080";
const state = document.getElementById("state")!;
const rows = document.getElementById("rows")!;
const prices = new Map<string, HTMLTableRowElement>();

function show(symbol: string, price?: number, change?: number) {
  let tr = prices.get(symbol);
  if (!tr) {
    tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td><td></td>";
    tr.cells[0].textContent = symbol;
    prices.set(symbol, tr);
    rows.append(tr);
  }
  if (price === undefined) return void (tr.remove(), prices.delete(symbol));
  tr.cells[1].textContent = price.toFixed(2);
  tr.cells[2].textContent = change ? (change > 0 ? "+" : "") + change.toFixed(2) : "";
  tr.className = change ? (change > 0 ? "up" : "down") : "";
}

async function subscribe(reg: ServiceWorkerRegistration): Promise<PushSubscriptionJSON> {
  try {
    const vapid = q.get("vapid") ?? (await (await fetch(new URL("/v1/webpush/vapid-public-key", proxy))).json()).vapid_public_key;
    // A browser without a reachable push service may never answer: give up after a while.
    const ms = +(q.get("subscribeTimeout") ?? 10000);
    const sub = await Promise.race([
      (async () => (await reg.pushManager.getSubscription()) ?? (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: vapid })))(),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`PushManager.subscribe did not answer in ${ms} ms`)), ms)),
    ]);
    return sub.toJSON();
  } catch (e) {
    example.subscribeError = String(e);
    state.textContent = "no push subscription (" + e + "); waiting for one";
    return new Promise((resolve) => (example.provideSubscription = resolve));
  }
}

async function main() {
  const reg = await navigator.serviceWorker.register("sw.js");
  await navigator.serviceWorker.ready;
  const subscription = (example.subscription = await subscribe(reg));
  const es = (example.es = new PushProxyEventSource(q.get("events") ?? "/events", {
    proxy,
    push: { platform: "webpush", subscription },
    wake: { urgent_events: ["alert"] },
    storage: example.storage, // shared with the service worker
    auto: true,
  }));
  const record = (ev: MessageEvent<string>) => example.seen.push({ type: ev.type, id: ev.lastEventId, data: ev.data });
  for (const type of ["snapshot", "add", "remove", "update", "alert", "marker", "gap"]) es.addEventListener(type, record);
  es.addEventListener("snapshot", (ev) => {
    for (const tr of prices.values()) tr.remove();
    prices.clear();
    for (const s of JSON.parse(ev.data).symbols) show(s.symbol, s.price);
  });
  es.addEventListener("add", (ev) => (({ symbol, price }) => show(symbol, price))(JSON.parse(ev.data)));
  es.addEventListener("update", (ev) => (({ symbol, price, change }) => show(symbol, price, change))(JSON.parse(ev.data)));
  es.addEventListener("remove", (ev) => show(JSON.parse(ev.data).symbol));
  es.addEventListener("error", (ev) => ev.error && example.errors.push(((ev.error as any).code ?? "") + ": " + (ev.error as any).message));
  es.onopen = () => (state.textContent = "live from the origin");
  es.addEventListener("gap", () => (state.textContent = "some events were dropped while asleep"));
}

main().catch((e) => {
  example.errors.push(String(e));
  state.textContent = "failed: " + e;
});
