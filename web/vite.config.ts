// Builds the UI into web/dist, which the sdq binary embeds. The build is deterministic
// (same sources and lock → same bytes, whatever the checkout's path), so the test
// command can rebuild it and compare with what is committed.
import { defineConfig } from "vite";

export default defineConfig({
  root: import.meta.dirname,
  base: "/",
  publicDir: "public",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // Everything the page needs comes from this server: no CDN, no web fonts elsewhere.
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
    chunkSizeWarningLimit: 1024,
  },
  oxc: {
    jsx: { runtime: "automatic" },
  },
  // `npx vite --config web/vite.config.ts`: the UI with hot reload, the API from a running
  // sdq (SDQ_URL, default the README's address).
  server: {
    proxy: Object.fromEntries(
      ["/v1", "/health", "/ready", "/openapi.json"].map((p) => [p, process.env.SDQ_URL ?? "http://127.0.0.1:7860"]),
    ),
  },
  resolve: {
    dedupe: ["react", "react-dom"],
  },
});
