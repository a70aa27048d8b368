// pushproxy-client/sw: the service-worker side of a web app whose PushProxyEventSource sleeps
// with a Web Push subscription as its push address.
import { request, names, withLock, CHANNEL } from "./api.js";
import { idbStorage, type ListableStorage } from "./idb.js";
import type { Held, Page } from "./eventsource.js";

export { idbStorage } from "./idb.js";
export type { ListableStorage } from "./idb.js";

/** An event of the backlog: the origin's id, type and data (a `gap` has the id before it). */
export interface BacklogEvent {
  id: string;
  event: string;
  data: string;
}

export interface WorkerOptions {
  /** Where the pages keep their sleeping streams; default: idbStorage(), as the pages must use. */
  storage?: ListableStorage;
  /** The fetch function; default: the platform's. */
  fetch?: typeof globalThis.fetch;
  /**
   * The notification for an urgent event (one of the handoff's `wake.urgent_events`): its
   * title and options; default: the event's type as title, its data as body, one
   * notification per stream (tag). `null`: none for this event.
   */
  notification?: (ev: BacklogEvent, stream: string) => { title: string; options?: NotificationOptions } | null;
}

/** The page size, as the page's client uses. */
const PAGE = 1000;

/**
 * Fetches the backlogs of the sleeping streams the push names (all when it names none), with
 * the tokens the pages stored, and keeps the events in storage for the pages (their `inbox`):
 * a page takes them when it wakes or handles a push, exactly once (under a Web Lock, the
 * stream's position and its inbox change together). Each request acknowledges the previous
 * page, and a last one acknowledges everything fetched, so the proxy forgets what is kept
 * here. Answers what it fetched per storage key, with the stream's urgent event types.
 */
export async function fetchBacklogs(payload: unknown, o: WorkerOptions = {}): Promise<Record<string, { id: string; events: BacklogEvent[]; urgent: string[] }>> {
  const storage = o.storage ?? idbStorage();
  const f = o.fetch ?? ((input, init) => fetch(input, init));
  const got: Record<string, { id: string; events: BacklogEvent[]; urgent: string[] }> = {};
  for (const key of await storage.keys()) {
    if (!key.startsWith("pushproxy:")) continue;
    await withLock(key, async () => {
      const h: Held | null = JSON.parse((await storage.getItem(key)) || "null");
      if (!h?.id || !h.events || !names(payload, h.id)) return;
      const events: BacklogEvent[] = [];
      got[key] = { id: h.id, events, urgent: h.urgent ?? [] };
      for (;;) {
        const url = new URL(h.events);
        url.searchParams.set("last_event_id", h.last);
        url.searchParams.set("limit", "" + PAGE);
        const page: Page = await request(f, url.href, { headers: { Accept: "application/json" } });
        if (!page.events.length) return;
        if (page.gap) events.push({ id: h.last, event: "gap", data: "" });
        for (const ev of page.events) events.push({ id: (h.last = ev.id), event: ev.event, data: ev.data });
        h.inbox = [...(h.inbox ?? []), ...events.slice(events.length - page.events.length - (page.gap ? 1 : 0))];
        await storage.setItem(key, JSON.stringify(h));
      }
    });
  }
  return got;
}

/**
 * Handles a `push` event: fetches the backlogs (fetchBacklogs), tells open pages on the
 * `pushproxy` BroadcastChannel which streams have events kept for them, and shows a
 * notification for the urgent events only. Call it from the worker's push listener, or let
 * `listen()` do it.
 */
export async function handlePushEvent(e: { data?: { text(): string } | null }, o: WorkerOptions = {}): Promise<void> {
  let payload: unknown;
  try {
    payload = JSON.parse(e.data?.text() ?? "");
  } catch {
    payload = undefined; // names every stream
  }
  const got = await fetchBacklogs(payload, o);
  const bc = new BroadcastChannel(CHANNEL);
  const shown: Promise<void>[] = [];
  for (const key in got) {
    bc.postMessage(key);
    const { id, events, urgent } = got[key];
    for (const ev of events) {
      if (!urgent.includes(ev.event)) continue;
      const n = o.notification ? o.notification(ev, id) : { title: ev.event, options: { body: ev.data, tag: "pushproxy:" + id } };
      if (n) shown.push((self as any).registration.showNotification(n.title, n.options));
    }
  }
  bc.close();
  await Promise.all(shown);
}

/** Adds the `push` listener to the service worker's global scope. */
export function listen(o: WorkerOptions = {}): void {
  self.addEventListener("push", (e: any) => e.waitUntil(handlePushEvent(e, o)));
}
