// The app shell's service worker. vite.config.ts writes it into dist/sw.js
// with __FILES__ (every built file) and __VERSION__ (a hash of that list) filled in.
//
// Built files are kept in one cache per build: a reload while the edge is down
// starts the app from it. The page (a navigation) is fetched from the network
// first, so a new build is picked up at once, and from the cache when the edge
// does not answer. The API, the socket, health and metrics never touch the cache.
const CACHE_PREFIX = "agent-relay-shell-";
const CACHE = CACHE_PREFIX + "__VERSION__";
const FILES = __FILES__;
const LIVE_PATHS = ["/api/", "/ws", "/healthz", "/readyz", "/metrics"];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(FILES.map((f) => new URL(f, self.registration.scope).href)))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith(CACHE_PREFIX) && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  const path = url.pathname.slice(new URL(self.registration.scope).pathname.length - 1);
  if (LIVE_PATHS.some((p) => path.startsWith(p))) return;
  if (request.mode === "navigate") {
    event.respondWith(
      fetch(request).catch(() =>
        caches.match(new URL("./", self.registration.scope).href, { cacheName: CACHE }).then((r) => r || Response.error()),
      ),
    );
    return;
  }
  event.respondWith(
    caches.match(request, { cacheName: CACHE, ignoreSearch: true }).then((cached) => cached || fetch(request)),
  );
});
