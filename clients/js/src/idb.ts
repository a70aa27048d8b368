import type { KeyValueStorage } from "./eventsource.js";

/** A KeyValueStorage that can also list its keys. */
export interface ListableStorage extends KeyValueStorage {
  keys(): Promise<string[]>;
}

/**
 * A KeyValueStorage in IndexedDB (database `name`, object store `kv`), which a page and its
 * service worker share: give it as `storage` to the page's PushProxyEventSource when the
 * service worker runs `pushproxy-client/sw` (service workers have no localStorage).
 */
export function idbStorage(name = "pushproxy"): ListableStorage {
  let db: Promise<IDBDatabase> | undefined;
  const op = (mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest): Promise<any> =>
    (db ??= new Promise((resolve, reject) => {
      const r = indexedDB.open(name, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("kv");
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    })).then(
      (d) =>
        new Promise((resolve, reject) => {
          const t = d.transaction("kv", mode);
          const r = f(t.objectStore("kv"));
          t.oncomplete = () => resolve(r.result);
          t.onerror = t.onabort = () => reject(t.error);
        }),
    );
  return {
    getItem: (k) => op("readonly", (s) => s.get(k)).then((v) => v ?? null),
    setItem: (k, v) => op("readwrite", (s) => s.put(v, k)),
    removeItem: (k) => op("readwrite", (s) => s.delete(k)),
    keys: () => op("readonly", (s) => s.getAllKeys()),
  };
}
