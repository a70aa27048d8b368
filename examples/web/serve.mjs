// Serves the built example (dist/, or --dir=DIR) and passes /events through to the ticker
// origin (--origin=URL, default http://127.0.0.1:9090), so that the page reads its stream
// on its own origin, as an app served next to its API does. Prints "listening on <URL>".
//
//   node serve.mjs [--port=8000] [--origin=http://127.0.0.1:9090] [--dir=dist]
import http from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const arg = (name, def) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? def;
const dir = arg("dir", fileURLToPath(new URL("dist", import.meta.url)));
const origin = new URL(arg("origin", "http://127.0.0.1:9090"));
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname == "/events") {
    // The stream, passed through as it comes (with Last-Event-ID and the query).
    const headers = { accept: "text/event-stream" };
    if (req.headers["last-event-id"]) headers["last-event-id"] = req.headers["last-event-id"];
    const up = http.get(new URL("/events" + url.search, origin), { headers }, (r) => {
      res.writeHead(r.statusCode, { "content-type": r.headers["content-type"] ?? "text/plain", "cache-control": "no-store" });
      r.pipe(res);
    });
    up.on("error", () => res.headersSent ? res.destroy() : (res.writeHead(502), res.end()));
    req.on("close", () => up.destroy());
    return;
  }
  const path = normalize(url.pathname == "/" ? "/index.html" : url.pathname);
  try {
    const body = await readFile(join(dir, path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
server.listen(+arg("port", "8000"), "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
