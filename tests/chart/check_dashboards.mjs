// Type-checks every dashboard JSON against Grafana's own schema types
// (@grafana/schema): each file becomes an object literal typed `Dashboard`,
// so unknown keys and wrong types fail `tsc --noEmit --strict`.
//   node check_dashboards.mjs DASHBOARD_DIR
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const dir = process.argv[2];
const files = fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
if (files.length === 0) {
  console.error(`no dashboards in ${dir}`);
  process.exit(1);
}
const lines = ['import type { Dashboard } from "@grafana/schema";', ""];
for (const f of files) {
  const name = f.replace(/\.json$/, "").replace(/[^A-Za-z0-9]/g, "_");
  lines.push(`// ${f}`, `export const ${name}: Dashboard = ${fs.readFileSync(path.join(dir, f), "utf8")};`);
}
const out = path.join(here, ".generated");
fs.mkdirSync(out, { recursive: true });
const file = path.join(out, "dashboards.ts");
fs.writeFileSync(file, lines.join("\n"));
const tsc = path.join(here, "node_modules", ".bin", "tsc");
try {
  execFileSync(tsc, ["--noEmit", "--strict", "--target", "es2020", "--module", "esnext",
    "--moduleResolution", "bundler", file], { stdio: "inherit" });
} catch {
  console.error(`dashboards do not match @grafana/schema (see ${file})`);
  process.exit(1);
}
console.log(`${files.length} dashboards match @grafana/schema's Dashboard type`);
