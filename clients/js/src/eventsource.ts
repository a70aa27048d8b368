import { request, names, withLock, CHANNEL } from "./api.js";

/** The part of the platform's EventSource this package uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: Event) => any) | null;
  onerror: ((ev: Event) => any) | null;
  addEventListener(type: string, listener: (ev: MessageEvent) => any): void;
  close(): void;
}

/** A constructor of EventSources: the platform's, or one from a package (Node, React Native). */
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

/**
 * Where a sleeping stream's id, token and last event id are kept across process deaths.
 * `localStorage` and React Native's AsyncStorage fit as they are; any async key-value store
 * does.
 */
export interface KeyValueStorage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

export interface PushProxyOptions {
  /** The pushproxy base URL, e.g. `https://push.example.com`. */
  proxy: string;
  /**
   * The push address the proxy wakes this device with, as in the handoff's `push`. Its
   * `device_secret`, when not given, is made here (32 random bytes) before the first handoff
   * and kept in `storage` under `pushproxy-device:` and the push address, so that every
   * handoff of this device presents the same one.
   */
  push?: Record<string, any>;
  /** Headers the proxy forwards to the origin (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** The proxy's API key, when it requires one. */
  apiKey?: string;
  /** Passed to the handoff as `compact`. */
  compact?: unknown;
  /** Passed to the handoff as `wake`, e.g. `{urgent_events: ["alert"]}`. */
  wake?: Record<string, unknown>;
  /** The EventSource constructor; default: the platform's. */
  EventSource?: EventSourceConstructor;
  /** The fetch function; default: the platform's. */
  fetch?: typeof globalThis.fetch;
  /** Where the sleeping stream is kept; default: `localStorage` where there is one; `null`: nowhere. */
  storage?: KeyValueStorage | null;
  /** The key under which it is kept; default: `pushproxy:` and the URL. */
  storageKey?: string;
  /** Passed to the EventSource. */
  withCredentials?: boolean;
  /** Browsers: sleep when the page is hidden, frozen or left, wake when it is shown again. */
  auto?: boolean;
  /**
   * The URL to connect to the origin with to resume after `lastEventId` (a browser's
   * EventSource cannot send a Last-Event-ID header on its first connect); default: the URL
   * with `last_event_id=<id>` in its query, which pushproxy's reference origin reads.
   */
  resumeUrl?: (url: string, lastEventId: string) => string;
}

/** What is stored while asleep: the held stream (if the handoff succeeded) and the position. */
export interface Held {
  id?: string;
  token?: string;
  /** The absolute events URL (it carries the token). */
  events?: string;
  /** The id of the last event dispatched. */
  last: string;
  /** The handoff's `wake.urgent_events` (for the service worker's notifications). */
  urgent?: string[];
  /** Events the service worker fetched while no page was there to take them. */
  inbox?: { id: string; event: string; data: string }[];
}

export interface Page {
  events: { id: string; event: string; data: string }[];
  more: boolean;
  gap: boolean;
}

const AWAKE = 0,
  ASLEEP = 1,
  CLOSED = 2;
/** The JSON page size: the API's largest, so a backlog of up to 1000 events is one request. */
export const PAGE = 1000;
/** The prefix of the ids the proxy gives events of an origin that sends none. */
const PROXY_ID = "pushproxy-seq-";
/**
 * The device secrets per storage, by push address, as loaded or made (promises, so that
 * instances sharing a storage share one).
 */
const secrets = new WeakMap<object, Map<string, Promise<string>>>();
const NOWHERE = {};

/** A new device secret: 32 random bytes, base64url without padding. */
function newSecret() {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=/g, "");
}

/**
 * An EventSource that can sleep through pushproxy. While awake it reads the origin directly
 * and behaves as an EventSource; `sleep()` hands the stream to the proxy; `wake()` dispatches
 * what the proxy queued meanwhile, takes the stream back, and reads the origin again from
 * where the proxy stopped, so that listeners see one unbroken stream.
 *
 * Events: `open`, `message` and the origin's named events, `error` (the origin's, and failures
 * of the proxy, with the PushProxyError as `error`), and `gap` when the proxy dropped events
 * it had queued (its backlog overflowed).
 */
export class PushProxyEventSource extends EventTarget {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;

  readonly url: string;
  readonly withCredentials: boolean;
  /** The id of the last event dispatched, as an EventSource's own `lastEventId`. */
  lastEventId = "";
  onopen: ((this: PushProxyEventSource, ev: Event) => any) | null = null;
  onmessage: ((this: PushProxyEventSource, ev: MessageEvent<string>) => any) | null = null;
  onerror: ((this: PushProxyEventSource, ev: Event & { error?: unknown }) => any) | null = null;

  private o: PushProxyOptions;
  private key: string;
  private storage: KeyValueStorage | null | undefined;
  private fetch: typeof globalThis.fetch;
  private state: number = AWAKE;
  private es?: EventSourceLike;
  /** While asleep: the held stream and the position. */
  private held?: Held;
  /** The types listened for, registered on every origin connection. */
  private types = new Set(["message"]);
  /** The listener of the current origin connection's events. */
  private forward?: (ev: MessageEvent) => void;
  /** Transitions run one after the other. */
  private queue = Promise.resolve();
  private stop = new AbortController();

  constructor(url: string | URL, options: PushProxyOptions) {
    super();
    this.o = options;
    this.url = new URL(url, globalThis.location?.href).href;
    this.withCredentials = !!options.withCredentials;
    this.key = options.storageKey ?? "pushproxy:" + this.url;
    this.storage = options.storage === undefined ? globalThis.localStorage : options.storage;
    this.fetch = options.fetch ?? ((input, init) => fetch(input, init));
    this.run(() => this.load());
    const doc = globalThis.document;
    if (doc && globalThis.BroadcastChannel) {
      // A service worker running pushproxy-client/sw tells pages what it fetched.
      const bc = new BroadcastChannel(CHANNEL);
      bc.onmessage = (m) => m.data == this.key && this.handlePush();
      this.stop.signal.addEventListener("abort", () => bc.close());
    }
    if (options.auto && doc) {
      const signal = this.stop.signal;
      const sleep = () => this.sleep();
      const wake = () => doc.visibilityState == "visible" && this.wake();
      doc.addEventListener("visibilitychange", () => (doc.visibilityState == "hidden" ? sleep : wake)(), { signal });
      doc.addEventListener("freeze", sleep, { signal });
      doc.addEventListener("resume", wake, { signal });
      globalThis.addEventListener?.("pagehide", sleep, { signal });
      globalThis.addEventListener?.("pageshow", wake, { signal });
    }
  }

  /** CONNECTING while asleep or connecting, OPEN while the origin's stream is open, CLOSED after close(). */
  get readyState(): number {
    return this.closed ? 2 : this.es ? this.es.readyState : 0;
  }

  private get closed() {
    return this.state == CLOSED;
  }

  /** Whether the stream is asleep (handed off, or waiting to be woken). */
  get sleeping(): boolean {
    return this.state == ASLEEP;
  }

  /** `open` and `error` (whose `error` member is the PushProxyError, when the proxy failed). */
  override addEventListener(type: "open" | "error", listener: (this: PushProxyEventSource, ev: Event & { error?: unknown }) => any, options?: AddEventListenerOptions | boolean): void;
  /** `message`, the origin's named events, and `gap`. */
  override addEventListener(type: string, listener: (this: PushProxyEventSource, ev: MessageEvent<string>) => any, options?: AddEventListenerOptions | boolean): void;
  override addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: AddEventListenerOptions | boolean): void;
  override addEventListener(type: string, listener: any, options?: AddEventListenerOptions | boolean): void {
    super.addEventListener(type, listener, options);
    if (type != "open" && type != "error" && !this.types.has(type)) {
      this.types.add(type);
      this.es?.addEventListener(type, this.forward!);
    }
  }

  /**
   * Closes the origin's stream and hands it to the proxy with the id of the last event
   * dispatched. Resolves when the proxy holds it (failures are `error` events: the stream then
   * resumes from the origin at `wake()`).
   */
  sleep(): Promise<void> {
    return this.run(async () => {
      if (this.state != AWAKE) return;
      this.state = ASLEEP;
      this.es?.close();
      this.es = undefined;
      const o = this.o;
      this.held = { last: this.lastEventId };
      await this.save();
      const push = await this.device();
      const h = await request(this.fetch, new URL("/v1/streams", o.proxy).href, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(o.apiKey && { Authorization: "Bearer " + o.apiKey }) },
        body: JSON.stringify({
          url: this.url,
          last_event_id: this.lastEventId || undefined,
          headers: o.headers,
          push,
          compact: o.compact,
          wake: o.wake,
        }),
        keepalive: true, // a handoff from pagehide outlives the page
      });
      // A device known before device secrets existed is given one now.
      if (h.device_secret) await this.device(h.device_secret);
      const held = { id: h.id, token: h.token, events: new URL(h.events_url, o.proxy).href, last: this.lastEventId, urgent: o.wake?.urgent_events as string[] | undefined };
      if (this.closed) return void this.takeBack(held).catch(() => {});
      this.held = held;
      await this.save();
    });
  }

  /**
   * Dispatches what the proxy queued while asleep (every event once, in order), takes the
   * stream back and reconnects to the origin after the last event. Resolves once the origin is
   * being connected to; when the proxy fails (the stream is gone: 401, 404; or it stays
   * unavailable) an `error` is dispatched and the origin is resumed after the last event
   * dispatched.
   */
  wake(): Promise<void> {
    return this.run(() => withLock(this.key, () => this.awake()));
  }

  private async awake() {
    if (this.state != ASLEEP) return;
    let resume: string | undefined;
    await this.reload();
    const h = this.held!;
    if (h.id) {
      try {
        await this.fetchBacklog();
        resume = (await this.takeBack(h)).last_event_id;
      } catch (e) {
        this.fail(e);
      }
    }
    resume ??= h.last;
    if (this.closed) return;
    this.held = undefined;
    this.state = AWAKE;
    await this.save();
    this.connect(resume.startsWith(PROXY_ID) ? "" : resume);
  }

  /**
   * For a host's push handler: when asleep and the push names this stream (or names none),
   * dispatches what the proxy queued, and stays asleep. Takes the payload as the push service
   * delivers it: APNs' dictionary, FCM's data (or the whole message), or Web Push's JSON.
   * A page whose service worker runs `pushproxy-client/sw` need not call it: the worker's
   * BroadcastChannel message does.
   */
  handlePush(payload?: unknown): Promise<void> {
    return this.run(() =>
      withLock(this.key, async () => {
        if (this.state == ASLEEP && this.held?.id && names(payload, this.held.id)) {
          await this.reload();
          await this.fetchBacklog();
        }
      }),
    );
  }

  /** Closes the stream; a stream held by the proxy is taken back (without waiting). */
  close(): void {
    const h = this.held;
    this.state = CLOSED;
    this.stop.abort();
    this.es?.close();
    this.es = undefined;
    this.held = undefined;
    void this.save();
    if (h?.id) this.takeBack(h).catch(() => {});
  }

  /**
   * Takes over what a service worker (pushproxy-client/sw) left in storage while asleep: its
   * position in the backlog, and dispatches the events it kept for a page.
   */
  private async reload() {
    try {
      const kept: Held | null = this.storage && JSON.parse((await this.storage.getItem(this.key)) || "null");
      if (kept?.id && kept.id == this.held?.id) {
        this.held = kept;
        for (const ev of kept.inbox ?? []) this.emit(ev.event, ev.data, ev.id);
        if (kept.inbox) {
          kept.inbox = undefined;
          await this.save();
        }
      }
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * The handoff's push with the device's secret: the one given in `push`, else the one kept
   * for this push address, else a new one, kept before it is first sent (so that a retried
   * first handoff presents the same). `answered`: the secret a handoff answered, kept instead.
   */
  private device(answered?: string) {
    const p = this.o.push,
      s = this.storage;
    if (!p || p.device_secret) return p;
    const key = "pushproxy-device:" + p.platform + ":" + (p.token ?? p.subscription?.endpoint);
    const cache = secrets.get(s ?? NOWHERE) ?? new Map<string, Promise<string>>();
    secrets.set(s ?? NOWHERE, cache);
    let secret = cache.get(key);
    if (answered || !secret) {
      cache.set(
        key,
        (secret = (async () => {
          const v = answered ?? (await s?.getItem(key)) ?? newSecret();
          await s?.setItem(key, v);
          return v;
        })()),
      );
    }
    return secret.then(
      (v) => ({ ...p, device_secret: v }),
      (e) => {
        cache.delete(key);
        throw e;
      },
    );
  }

  /** Takes the stream back from the proxy, acknowledging what was dispatched. */
  private takeBack(h: Held): Promise<{ last_event_id?: string }> {
    const url = new URL("/v1/streams/" + h.id, this.o.proxy);
    url.searchParams.set("last_event_id", h.last);
    return request(this.fetch, url.href, { method: "DELETE", headers: { Authorization: "Bearer " + h.token } });
  }

  /** Runs f after the transitions before it; its failures become `error` events. */
  private run(f: () => Promise<void> | void): Promise<void> {
    return (this.queue = this.queue.then(() => (this.closed ? undefined : f())).catch((e) => this.fail(e)));
  }

  /** Starts from storage: asleep when a sleeping stream was kept, else connected. */
  private async load() {
    let held: Held | undefined;
    try {
      const kept = await this.storage?.getItem(this.key);
      if (kept) held = JSON.parse(kept);
    } catch (e) {
      this.fail(e); // unreadable: start afresh
    }
    if (typeof held?.last == "string") {
      this.held = held;
      this.lastEventId = visibleId(held.last);
      this.state = ASLEEP;
      // Not awaited: it runs after this transition.
      if (this.o.auto && globalThis.document?.visibilityState == "visible") void this.wake();
    } else {
      this.connect("");
    }
  }

  /** Fetches the backlog in pages and dispatches it; the next request acknowledges the page. */
  private async fetchBacklog() {
    const h = this.held!;
    for (let more = true; more && !this.closed; ) {
      const url = new URL(h.events!);
      url.searchParams.set("last_event_id", h.last);
      url.searchParams.set("limit", "" + PAGE);
      const page: Page = await request(this.fetch, url.href, { headers: { Accept: "application/json" } });
      if (this.closed) return;
      // A gap with nothing queued is a stream closed with its backlog dropped (by the
      // operator, say): the origin resumes after h.last at wake, so nothing is lost. Only a
      // backlog that overflowed loses events.
      if (page.gap && page.events.length) this.emit("gap", "", h.last);
      for (const ev of page.events) this.emit(ev.event, ev.data, (h.last = ev.id));
      more = page.more;
      await this.save();
    }
  }

  private connect(lastEventId: string) {
    const o = this.o;
    const ES = o.EventSource ?? globalThis.EventSource;
    const url = lastEventId ? (o.resumeUrl ?? resumeUrl)(this.url, lastEventId) : this.url;
    const es = (this.es = new ES(url, { withCredentials: this.withCredentials }));
    // Nothing still coming from a connection closed since is dispatched.
    es.onopen = () => this.es == es && this.emit("open");
    es.onerror = () => this.es == es && this.emit("error");
    this.forward = (ev) => this.es == es && this.emit(ev.type, ev.data, ev.lastEventId || this.lastEventId);
    for (const type of this.types) es.addEventListener(type, this.forward);
  }

  private emit(type: string, data?: string, id?: string) {
    if (this.closed) return;
    let ev: Event;
    if (id === undefined) ev = new Event(type);
    else {
      this.lastEventId = visibleId(id);
      const init = { data, lastEventId: this.lastEventId, origin: new URL(this.url).origin };
      ev = typeof MessageEvent == "function" ? new MessageEvent(type, init) : Object.assign(new Event(type), init);
    }
    this.dispatch(ev);
  }

  private fail(e: unknown) {
    if (!this.closed) this.dispatch(Object.assign(new Event("error"), { error: e }));
  }

  /**
   * Dispatches ev to the listeners, then to its handler attribute (onmessage, onopen, onerror,
   * and ongap). As with listeners, a handler that throws is reported, and changes nothing here.
   */
  private dispatch(ev: Event) {
    this.dispatchEvent(ev);
    const handler = (this as any)["on" + ev.type];
    try {
      if (typeof handler == "function") handler.call(this, ev);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }

  private async save() {
    try {
      const s = this.storage;
      if (s) await (this.held ? s.setItem(this.key, JSON.stringify(this.held)) : s.removeItem(this.key));
    } catch (e) {
      this.fail(e);
    }
  }
}

/** The id an EventSource would show: the proxy's own ids stand for "no id". */
function visibleId(id: string) {
  return id.startsWith(PROXY_ID) ? "" : id;
}

function resumeUrl(url: string, lastEventId: string) {
  const u = new URL(url);
  u.searchParams.set("last_event_id", lastEventId);
  return u.href;
}
