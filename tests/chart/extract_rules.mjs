// The rule groups of the PrometheusRule in rendered manifests, as a plain
// Prometheus rules file (what promtool reads):
//   node extract_rules.mjs rendered.yaml rules.yaml
import fs from "node:fs";
import { dump, loadAll } from "js-yaml";

const rules = loadAll(fs.readFileSync(process.argv[2], "utf8")).filter(
  (doc) => doc && doc.kind === "PrometheusRule",
);
if (rules.length !== 1) {
  console.error(`expected one PrometheusRule, found ${rules.length}`);
  process.exit(1);
}
fs.writeFileSync(process.argv[3], dump({ groups: rules[0].spec.groups }));
console.log(`${rules[0].spec.groups.reduce((n, g) => n + g.rules.length, 0)} rules`);
