/**
 * Build of the browser demo. The gateway embeds demo/dist into its binary and
 * serves exactly three files under /demo/ (index.html, app.js, app.css) with a
 * strict CSP, so the build must emit those three names, nothing else (no
 * hashed names, no source maps, no extra assets) and be byte-for-byte
 * reproducible: test/browser/demo.test.ts rebuilds and compares with the
 * committed dist.
 */
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/demo/",
  // No public/ folder: anything copied from it would be a fourth file.
  publicDir: false,
  logLevel: "warn",
  resolve: {
    // The demo imports the SDK by its package name, as an app would; here it
    // is bundled from source so the demo always matches the SDK beside it.
    alias: { "@chatgw/client": fileURLToPath(new URL("../src/index.ts", import.meta.url)) },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    cssCodeSplit: false,
    // Inline nothing as data: URLs and never emit a preload polyfill: the
    // CSP allows only same-origin scripts and styles.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
    rollupOptions: {
      input: fileURLToPath(new URL("index.html", import.meta.url)),
      output: {
        entryFileNames: "app.js",
        assetFileNames: "app[extname]",
        // One file: a dynamic import would otherwise become a chunk the
        // gateway does not serve.
        inlineDynamicImports: true,
      },
    },
  },
});
