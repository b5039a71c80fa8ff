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
  return {
    plugins: [react()],
    // Relative asset URLs so the edge can serve dist/ at any mount point.
    base: "./",
    build: { outDir: "dist", emptyOutDir: true },
    test: {
      environment: "jsdom",
      include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    },
  };
});
