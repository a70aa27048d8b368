/// <reference lib="webworker" />
// The service worker: on a Web Push from pushproxy, fetches the backlogs of the streams the
// push names with the tokens the page stored (IndexedDB), keeps the events for the page and
// tells open pages (BroadcastChannel), and shows a notification for urgent events only
// ("alert", the handoff's wake.urgent_events).
import { listen } from "pushproxy-client/sw";

declare const self: ServiceWorkerGlobalScope;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
listen({
  notification: (ev) => ({ title: "Ticker alert", options: { body: ev.data, tag: "ticker-alert" } }),
});
