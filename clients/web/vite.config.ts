/// <reference types="vitest/config" />
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { resolve } from "node:path";
import react from "@vitejs/plugin-react";
import { type Plugin, defineConfig } from "vite";

/**
 * Writes dist/sw.js (the app shell's service worker, src/app/sw.template.js)
 * with the list of every built file, so the worker keeps exactly this build
 * and a new build (new hashes) makes a new worker.
 */
function serviceWorker(): Plugin {
  return {
    name: "agent-relay-service-worker",
    apply: "build",
    generateBundle(_options, bundle) {
      const built = Object.keys(bundle).filter((f) => !f.endsWith(".map"));
      const copied = readdirSync(resolve(import.meta.dirname, "public"));
      const files = [...new Set(["./", "index.html", ...built, ...copied])].sort();
      const version = createHash("sha256").update(files.join("\n")).digest("hex").slice(0, 16);
      const template = readFileSync(resolve(import.meta.dirname, "src/app/sw.template.js"), "utf8");
      const source = template
        .replace(/^const FILES = __FILES__;$/m, `const FILES = ${JSON.stringify(files)};`)
        .replace(/"__VERSION__"/, JSON.stringify(version));
      if (source.includes("= __FILES__")) throw new Error("sw.template.js: no FILES line to fill in");
      this.emitFile({ type: "asset", fileName: "sw.js", source });
    },
  };
}

// Two builds from one config:
//   `vite build`            -> dist/      the chat app, served by ws_edge at `/`
//   `vite build --mode lib` -> dist-lib/  the library entry (service + hooks), React external
// (and `vite build --mode bench` -> dist-bench/, the decode bench page, below)
export default defineConfig(({ mode }) => {
  if (mode === "lib") {
    return {
      plugins: [react()],
      build: {
        outDir: "dist-lib",
        emptyOutDir: true,
        lib: {
          entry: resolve(import.meta.dirname, "src/lib/index.ts"),
          formats: ["es"],
          fileName: "agent-relay",
        },
        rollupOptions: { external: ["react", "react/jsx-runtime", "react-dom"] },
      },
    };
  }
  if (mode === "bench") {
    // `vite build --mode bench` -> dist-bench/  the frame decode bench page (bench/browser_decode.py)
    return {
      base: "./",
      build: {
        outDir: "dist-bench",
        emptyOutDir: true,
        rollupOptions: { input: resolve(import.meta.dirname, "bench.html") },
      },
    };
  }
  // `npm run dev` serves the app with hot reload and forwards the API and the
  // socket to a running edge (allow the dev origin there:
  // AGENT_RELAY_ALLOWED_ORIGINS=http://localhost:5173).
  const edge = process.env.AGENT_RELAY_EDGE ?? "http://127.0.0.1:8080";
  return {
    plugins: [react(), serviceWorker()],
    // Relative asset URLs so the edge can serve dist/ at any mount point.
    base: "./",
    server: {
      proxy: {
        "/api": edge,
        "/ws": { target: edge.replace(/^http/, "ws"), ws: true },
      },
    },
    build: { outDir: "dist", emptyOutDir: true },
    test: {
      environment: "jsdom",
      include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    },
  };
});
