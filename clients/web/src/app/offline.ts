/**
 * The app shell works without the edge: a service worker (`sw.js`, written at
 * build time with the list of built files, see vite.config.ts) keeps the
 * built files, so a reload while the edge is down still starts the app, which
 * shows the conversation and the outbox saved in this browser and reconnects
 * on its own. Only production builds register it (the dev server's files change
 * on every edit).
 */
export function registerServiceWorker(): void {
  if (!import.meta.env.PROD || !("serviceWorker" in navigator)) return;
  // After the first paint: the worker's install fetches every file once.
  window.addEventListener("load", () => {
    navigator.serviceWorker.register("./sw.js").catch(() => {
      // No worker (a private window, say): the app works, only not offline.
    });
  });
}
