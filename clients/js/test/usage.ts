// Type-checked (npm test: tsc -p test/tsconfig.json), never run: the package as a TypeScript app
// uses it.
import { PushProxyEventSource, PushProxyError, type KeyValueStorage } from "pushproxy-client";

declare const asyncStorage: KeyValueStorage;

const es = new PushProxyEventSource("https://origin.example/stocks", {
  proxy: "https://push.example",
  push: { platform: "fcm", token: "registration-token" },
  headers: { Authorization: "Bearer origin-credential" },
  wake: { urgent_events: ["alert"] },
  storage: asyncStorage,
});
es.onmessage = (ev) => console.log(ev.data.toUpperCase(), ev.lastEventId);
es.addEventListener("update", (ev) => console.log(ev.data.length, ev.lastEventId));
es.addEventListener("gap", (ev) => console.log("events may be missing after", ev.lastEventId));
es.addEventListener("error", (ev) => {
  if (ev.error instanceof PushProxyError) console.log(ev.error.status, ev.error.code);
});
es.addEventListener("open", () => console.log(es.readyState === PushProxyEventSource.OPEN));
es.addEventListener("update", { handleEvent: (ev: Event) => console.log(ev.type) });

export async function lifecycle(payload: unknown): Promise<void> {
  await es.sleep();
  await es.handlePush(payload);
  await es.wake();
  if (!es.sleeping) es.close();
}
