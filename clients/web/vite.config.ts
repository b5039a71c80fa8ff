/// <reference types="vitest/config" />
import { resolve } from "node:path";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Two builds from one config:
//   `vite build`            -> dist/      the chat app, served by ws_edge at `/`
//   `vite build --mode lib` -> dist-lib/  the library entry (service + hooks), React external
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
  // `npm run dev` serves the app with hot reload and forwards the API and the
  // socket to a running edge (allow the dev origin there:
  // AGENT_RELAY_ALLOWED_ORIGINS=http://localhost:5173).
  const edge = process.env.AGENT_RELAY_EDGE ?? "http://127.0.0.1:8080";
  return {
    plugins: [react()],
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
