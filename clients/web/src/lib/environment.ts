/**
 * The page's events a connection reacts to, behind one subscribe: the network
 * going away and coming back, the tab becoming visible again, the page being
 * hidden for good. No decisions here: the service decides what each means.
 */
import type { NetworkMonitor } from "./clock";

export interface EnvironmentHandlers {
  /** `navigator.onLine` changed. */
  network(online: boolean): void;
  /** The tab became visible again (its timers may have been throttled meanwhile). */
  visible(): void;
  /** The page is being hidden or unloaded: save what must survive. */
  pageHide(): void;
}

/** Subscribe `handlers` to the network monitor and (in a browser) the window; returns the unsubscribe. */
export function watchEnvironment(network: NetworkMonitor, handlers: EnvironmentHandlers): () => void {
  const unsubscribeNetwork = network.subscribe((online) => handlers.network(online));
  if (typeof window === "undefined" || typeof document === "undefined") return unsubscribeNetwork;
  const pageHide = (): void => handlers.pageHide();
  const visibility = (): void => {
    if (document.visibilityState === "visible") handlers.visible();
  };
  window.addEventListener("pagehide", pageHide);
  document.addEventListener("visibilitychange", visibility);
  return () => {
    unsubscribeNetwork();
    window.removeEventListener("pagehide", pageHide);
    document.removeEventListener("visibilitychange", visibility);
  };
}
