// Builds dist/index.js (the package: ESM, react and @niivue/niivue left to the host's bundler)
// and ../demo/dist/demo.js (the demo page: everything in one file). No dev server needed.
import { build } from "esbuild";

const common = { bundle: true, format: "esm", target: "es2022", jsx: "automatic", sourcemap: true, logLevel: "warning" };
await build({
  ...common,
  entryPoints: ["src/index.ts"],
  outfile: "dist/index.js",
  external: ["react", "react-dom", "react/jsx-runtime", "@niivue/niivue"],
});
await build({
  ...common,
  entryPoints: ["../demo/demo.tsx"],
  outfile: "../demo/dist/demo.js",
  minify: true,
  define: { "process.env.NODE_ENV": '"production"' },
  nodePaths: ["node_modules"],
});
