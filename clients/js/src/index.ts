export { PushProxyEventSource } from "./eventsource.js";
export type { PushProxyOptions, KeyValueStorage, EventSourceLike, EventSourceConstructor } from "./eventsource.js";
export { PushProxyError } from "./api.js";
export { idbStorage } from "./idb.js";
export type { ListableStorage } from "./idb.js";
