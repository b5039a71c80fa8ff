// Gzipped sizes of the built app (dist/) and library entry (dist-lib/), as served.
// Usage: npm run build && npm run size
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

function report(label, dir, initial) {
  let raw = 0;
  let gz = 0;
  let initialGz = 0;
  for (const path of files(dir).filter((p) => /\.(js|css|html)$/.test(p))) {
    const bytes = readFileSync(path);
    const zipped = gzipSync(bytes, { level: 9 }).length;
    raw += bytes.length;
    gz += zipped;
    if (initial(path)) initialGz += zipped;
    console.log(`  ${path.padEnd(48)} ${(bytes.length / 1024).toFixed(1).padStart(7)} kB  gzip ${(zipped / 1024).toFixed(1).padStart(6)} kB`);
  }
  console.log(`${label}: ${(raw / 1024).toFixed(1)} kB, gzip ${(gz / 1024).toFixed(1)} kB (loaded before first paint: gzip ${(initialGz / 1024).toFixed(1)} kB)`);
}

const html = readFileSync("dist/index.html", "utf8");
report("app (dist/)", "dist", (p) => p.endsWith("index.html") || html.includes(p.replace(/^dist\//, "")));
report("library entry (dist-lib/)", "dist-lib", () => true);
