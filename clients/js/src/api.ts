// The proxy's HTTP API as the device uses it: one request, retried while the proxy says so.

/** An error of the proxy's API, or of the network on the way to it. */
export class PushProxyError extends Error {
  /**
   * @param status the HTTP status (0: the request did not get an answer)
   * @param code the problem's stable `code` (`unauthorized`, `not-found`, ...), else
   *   `http-<status>` or `network`
   */
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
    this.name = "PushProxyError";
  }
}

/** The BroadcastChannel on which pushproxy-client/sw names the streams it fetched for pages. */
export const CHANNEL = "pushproxy";

/** How many times a request is tried while the proxy answers 429, 502-504, or nothing. */
export const ATTEMPTS = 5;
/** The first retry delay in ms; it doubles per attempt (with jitter), unless Retry-After says. */
const FIRST_DELAY = 500;
/** The longest wait between two attempts, whatever Retry-After asks. */
const MAX_DELAY = 60_000;
/** The longest a request may take. */
const TIMEOUT = 30_000;

/**
 * request sends one API request and answers its JSON body. 429, 502, 503, 504 and network
 * errors are tried again (ATTEMPTS in all), after Retry-After when the proxy sends it, else
 * after an exponential backoff with jitter; any other failure is thrown at once as a
 * PushProxyError.
 */
export async function request(fetch: typeof globalThis.fetch, url: string, init: RequestInit): Promise<any> {
  for (let attempt = 1; ; attempt++) {
    let res: Response | undefined;
    let problem: { detail?: string; code?: string } = {};
    try {
      res = await fetch(url, { ...init, signal: AbortSignal.timeout?.(TIMEOUT) });
      const body = await res.json();
      if (res.ok) return body;
      problem = body;
    } catch (e) {
      // A network error, a timeout, or a body that is not JSON.
      if (res?.ok) throw new PushProxyError("the proxy's answer is not JSON", res.status, "invalid-response");
      problem.detail = (e as Error).message;
    }
    const status = res ? res.status : 0;
    if (attempt >= ATTEMPTS || !(status == 0 || status == 429 || (status >= 502 && status <= 504))) {
      throw new PushProxyError(problem.detail || "HTTP " + status, status, problem.code || (status ? "http-" + status : "network"));
    }
    const after = res?.headers.get("Retry-After");
    let delay = FIRST_DELAY * 2 ** (attempt - 1) * (0.5 + Math.random() / 2);
    if (after) delay = /^\d+$/.test(after) ? +after * 1000 : Date.parse(after) - Date.now() || 0;
    await new Promise((r) => setTimeout(r, Math.min(Math.max(delay, 0), MAX_DELAY)));
  }
}

/**
 * Whether a push payload names the stream: the pushproxy object, found as the payload itself,
 * its `pushproxy` member (APNs, Web Push), or `data.pushproxy` (FCM; a JSON string there),
 * lists the stream, or lists none or not all.
 */
export function names(payload: unknown, id: string): boolean {
  try {
    const parse = (v: any) => (typeof v == "string" ? JSON.parse(v) : v);
    const p = parse(payload);
    const o = parse(p?.pushproxy ?? p?.data?.pushproxy ?? p);
    return !o?.streams || o.omitted > 0 || id in o.streams;
  } catch {
    return true;
  }
}

/**
 * Runs f holding the Web Lock `pushproxy:` + name where the platform has Web Locks (browsers,
 * service workers), so that a page and its service worker do not read the same backlog at
 * once; else runs it.
 */
export function withLock<T>(name: string, f: () => Promise<T>): Promise<T> {
  const locks = (globalThis as any).navigator?.locks;
  return locks ? locks.request("pushproxy-lock:" + name, f) : f();
}
