// Validates the custom resources of rendered manifests (KEDA ScaledObject,
// Prometheus-operator ServiceMonitor and PrometheusRule) against their CRDs' OpenAPI schemas,
// which kubernetes-validate does not ship.
//   node check_custom_resources.mjs rendered.yaml
import fs from "node:fs";
import { loadAll } from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};
let checked = 0;
let invalid = 0;
for (const doc of loadAll(fs.readFileSync(process.argv[2], "utf8"))) {
  if (!doc || !doc.apiVersion || doc.apiVersion.split("/").length < 2) continue;
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) continue;
  checked++;
  try {
    new Model(doc).validate();
    console.log(`valid ${doc.kind}/${doc.metadata.name}`);
  } catch (e) {
    invalid++;
    console.log(`INVALID ${doc.kind}/${doc.metadata.name}: ${e.message}`);
  }
}
console.log(`${checked} custom resources checked, ${invalid} invalid`);
process.exit(invalid ? 1 : 0);
