// cropdoc's service worker: every file of the app in one cache, so that the page works with
// the network off once it has been opened. A new export (another version) replaces the cache.
const CACHE = "cropdoc-__VERSION__";

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const listed = await (await fetch("files.json", { cache: "no-store" })).json();
    const cache = await caches.open(CACHE);
    await cache.addAll(listed.files);
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  if (event.request.method !== "GET") return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const found = await cache.match(event.request, { ignoreSearch: true });
    return found || fetch(event.request);
  })());
});
