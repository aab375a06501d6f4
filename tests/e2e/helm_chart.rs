//! The Helm chart and the Grafana dashboards, checked offline with real
//! tools: `helm lint --strict` and `helm template` for every values file in
//! `charts/hourglass/ci/`, the rendered manifests against Kubernetes' schemas
//! (kubernetes-validate --strict) and the custom resources against their
//! CRDs' schemas, the rendered hourglass.toml parsed by the real binary, and
//! every dashboard type-checked against @grafana/schema. scripts/test
//! installs the tools (scripts/lib.sh `ensure_chart_tools`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hourglass");
const CHECKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart");

fn tool(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run the tests with scripts/test, which installs the chart's tools"
        )
    });
    assert!(
        path.exists(),
        "{var}={} does not exist: run scripts/test",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown} failed:\n{text}");
    text
}

fn helm() -> Command {
    Command::new(tool("HOURGLASS_HELM"))
}

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(CHART).join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "defaults, KEDA and external-secrets values files"
    );
    files
}

/// The block of `key: |` in a rendered manifest, unindented.
fn literal_block(manifest: &str, key: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "no `{key}: |` in:\n{manifest}");
    lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Resources of `kind` (top-level `kind:` lines only, not references).
fn kinds(manifests: &str, kind: &str) -> usize {
    count(manifests, &format!("\nkind: {kind}\n"))
}

#[test]
fn chart_lints_renders_and_validates_with_every_values_file() {
    let scratch = std::env::temp_dir().join(format!("hg_chart_{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for values in values_files() {
        let name = values.file_stem().unwrap().to_string_lossy().into_owned();
        ok(helm().args(["lint", "--strict", CHART, "-f"]).arg(&values));
        let manifests = ok(helm()
            .args(["template", "hg", CHART, "--namespace", "analytics", "-f"])
            .arg(&values));
        let rendered = scratch.join(format!("{name}.yaml"));
        std::fs::write(&rendered, &manifests).unwrap();

        // Kubernetes' own schemas, strict: unknown fields are errors.
        let report = ok(Command::new(tool("HOURGLASS_KUBE_VALIDATE"))
            .args(["--strict", "--quiet"])
            .arg(&rendered));
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("Couldn't find schema for kind ScaledObject")
                    || line.contains("Couldn't find schema for kind ServiceMonitor")
                    || line.contains("Couldn't find schema for kind PrometheusRule"),
                "{name}: kubernetes-validate: {line}"
            );
        }
        // ...and the custom resources against their CRDs.
        let crs = ok(Command::new("node")
            .arg(Path::new(CHECKS).join("check_custom_resources.mjs"))
            .arg(&rendered));
        let scaled = kinds(&manifests, "ScaledObject");
        let monitors = kinds(&manifests, "ServiceMonitor");
        let rules = kinds(&manifests, "PrometheusRule");
        assert!(
            crs.contains(&format!(
                "{} custom resources checked, 0 invalid",
                scaled + monitors + rules
            )),
            "{name}: {crs}"
        );

        // Every component, hardened.
        let with_query = manifests.contains("args: [\"query\"]");
        let deployments = 5 + usize::from(with_query);
        assert_eq!(kinds(&manifests, "Deployment"), deployments, "{name}");
        let pods = deployments + kinds(&manifests, "Job");
        assert_eq!(
            count(&manifests, "readOnlyRootFilesystem: true"),
            pods,
            "{name}"
        );
        assert_eq!(
            count(&manifests, "allowPrivilegeEscalation: false"),
            pods,
            "{name}"
        );
        assert_eq!(count(&manifests, "runAsNonRoot: true"), pods, "{name}");
        assert_eq!(
            count(&manifests, "path: /health/ready"),
            deployments,
            "{name}"
        );
        for command in [
            "[\"ingest\"]",
            "[\"aggregate\"]",
            "[\"load\"]",
            "[\"archive\"]",
            "[\"batch\"]",
        ] {
            assert!(
                manifests.contains(&format!("args: {command}")),
                "{name}: no {command}"
            );
        }

        // The rendered config is one the binary accepts, values included
        // (`config --check`: what every component checks at start).
        let toml = literal_block(&manifests, "hourglass.toml");
        let config_file = scratch.join(format!("{name}.toml"));
        std::fs::write(&config_file, &toml).unwrap();
        let checked = ok(Command::new(crate::common::hourglass_bin())
            .arg("--config")
            .arg(&config_file)
            .args(["config", "--check"])
            .env_remove("HOURGLASS_CONFIG"));
        assert!(checked.contains("configuration valid"), "{name}: {checked}");
        let effective = ok(Command::new(crate::common::hourglass_bin())
            .arg("--config")
            .arg(&config_file)
            .arg("config")
            .env_remove("HOURGLASS_CONFIG"));
        assert!(
            effective.contains("listen = \"0.0.0.0:8080\""),
            "{name}: {effective}"
        );
        assert!(
            effective.contains("http_listen = \"0.0.0.0:9090\""),
            "{name}"
        );

        match name.as_str() {
            "static-secrets-values" => {
                // The IP hash key reaches ingest only, from its Secret.
                assert_eq!(
                    count(&manifests, "name: HOURGLASS_INGEST__IP_HASH_KEY"),
                    1,
                    "{name}"
                );
                assert!(manifests.contains("name: hourglass-ip-hash"));
                assert!(
                    effective.contains("[projects.web]")
                        && effective.contains("ip_policy = \"truncate\""),
                    "{effective}"
                );
            }
            "cluster-values" => {
                assert!(effective.contains("cluster = \"prod\""), "{effective}");
                assert!(effective.contains("insert_quorum = 2"), "{effective}");
                assert!(effective.contains("replication_factor = 3"), "{effective}");
                assert_eq!(rules, 1, "the alert rules are on");
                assert!(
                    manifests.contains("- migrate\n"),
                    "the migration job runs `migrate` (ON CLUSTER)"
                );
            }
            "keda-values" => {
                assert_eq!(scaled, 3, "a ScaledObject per consumer");
                assert_eq!(
                    kinds(&manifests, "HorizontalPodAutoscaler"),
                    0,
                    "ingest's HPA is off"
                );
                assert!(manifests.contains("consumerGroup: \"hourglass-aggregator\""));
                assert!(effective.contains("partitions = 12"));
                // Three ingest pods split the projects' quotas.
                assert!(effective.contains("replicas = 3"), "{effective}");
                assert!(
                    effective.contains("[projects.free-tier-app]\nevents_per_sec = 100\n"),
                    "{effective}"
                );
                assert!(with_query, "the query API is on");
                assert!(manifests.contains("name: HOURGLASS_QUERY__JWT_SECRET"));
            }
            "external-secrets-values" => {
                assert!(
                    manifests.contains("eks.amazonaws.com/role-arn"),
                    "IRSA annotation"
                );
                assert!(manifests.contains("name: clickhouse-hourglass"));
                assert!(manifests.contains("name: HOURGLASS_KAFKA__SASL_PASSWORD"));
                assert!(
                    effective.contains("\"security.protocol\" = \"SASL_SSL\""),
                    "{effective}"
                );
                assert!(
                    !manifests.contains("HOURGLASS_S3__ACCESS_KEY_ID"),
                    "S3 from the AWS chain, not keys"
                );
                // ...and no built-in static keys left in the config either.
                assert!(effective.contains("access_key_id = \"\""), "{effective}");
                assert!(
                    effective.contains("secret_access_key = \"\""),
                    "{effective}"
                );
                assert_eq!(
                    count(&manifests, "name: HOURGLASS_QUERY__READ_PASSWORD"),
                    1,
                    "the reader's password only in the query pod"
                );
                assert_eq!(monitors, 1);
                // A policy selects every component's pods: ingest, query,
                // and the consumers, batch and migrations together.
                assert_eq!(kinds(&manifests, "NetworkPolicy"), 3);
                let query_policy = manifests
                    .split("\n---")
                    .find(|doc| {
                        doc.contains("kind: NetworkPolicy")
                            && doc.contains("app.kubernetes.io/component: query")
                    })
                    .expect("a NetworkPolicy selecting the query pods");
                assert!(query_policy.contains("kubernetes.io/metadata.name: web"));
                assert!(
                    query_policy.contains("kubernetes.io/metadata.name: monitoring"),
                    "scrapers reach the query API's /metrics"
                );
                assert!(
                    manifests.contains("values: [aggregator, loader, archiver, batch, migrate]"),
                    "consumers' policy"
                );

                assert_eq!(kinds(&manifests, "Ingress"), 1);
                assert!(effective.contains("grace_secs = 120"));
                assert!(with_query, "the query API is on");
                assert!(effective.contains("jwt_jwks_file = \"/etc/hourglass/jwt/jwks.json\""));
            }
            "default-values" => {
                assert_eq!(kinds(&manifests, "HorizontalPodAutoscaler"), 1);
                assert_eq!(kinds(&manifests, "PodDisruptionBudget"), 1);
                assert!(manifests.contains("grafana_dashboard: \"1\""));
                assert!(manifests.contains("helm.sh/hook: pre-install,pre-upgrade"));
                assert!(manifests.contains("- --create-topics"));
                // Autoscaled ingest: quotas split by the most pods that may run.
                assert!(effective.contains("replicas = 10"), "{effective}");
            }
            _ => {}
        }
        // Secrets are referenced, never inlined.
        assert_eq!(kinds(&manifests, "Secret"), 0, "{name}");
        assert!(!manifests.contains("testsecret"), "{name}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn chart_refuses_values_that_would_deploy_something_broken() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["--set", "aggregator.replicas=9"],
            "aggregator.replicas (9) exceeds config.kafka.partitions (8)",
        ),
        (
            &["--set", "config.clickhouse.password=hunter2"],
            "/config/clickhouse/password",
        ),
        (
            &["--set", "config.kafka.client.sasl\\.password=hunter2"],
            "invalid propertyName 'sasl.password'",
        ),
        (
            &["--set", "config.kafka.client.ssl\\.key\\.password=hunter2"],
            "invalid propertyName 'ssl.key.password'",
        ),
        (
            &["--set", "config.query.read_password=hunter2"],
            "/config/query/read_password",
        ),
        (
            &["--set", "secrets.writeKeys.name="],
            "ingest needs write keys",
        ),
        (
            &["--set", "config.lake.storage=local"],
            "the archiver in a cluster writes to S3",
        ),
        (
            &["--set", "query.enabled=true"],
            "the query API needs the key its tokens are checked with",
        ),
    ];
    for (args, expected) in cases {
        let out = run(helm().args(["template", "hg", CHART]).args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Values the schema lets through but the pipeline cannot run with:
    // `hourglass config --check` names each before anything is deployed.
    let manifests = ok(helm().args(["template", "hg", CHART]).args([
        "--set",
        "config.aggregator.window_secs=7",
        "--set",
        "config.loader.batch_rows=0",
    ]));
    let config_file =
        std::env::temp_dir().join(format!("hg_chart_bad_{}.toml", std::process::id()));
    std::fs::write(&config_file, literal_block(&manifests, "hourglass.toml")).unwrap();
    let out = run(Command::new(crate::common::hourglass_bin())
        .arg("--config")
        .arg(&config_file)
        .args(["config", "--check"])
        .env_remove("HOURGLASS_CONFIG"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("aggregator.window_secs (7) must divide an hour"),
        "{stderr}"
    );
    assert!(stderr.contains("loader.batch_rows"), "{stderr}");
    let _ = std::fs::remove_file(&config_file);
}

#[test]
fn dashboards_match_grafanas_schema_types() {
    let dir = Path::new(CHART).join("dashboards");
    let report = ok(Command::new("node")
        .arg(Path::new(CHECKS).join("check_dashboards.mjs"))
        .arg(&dir));
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 3, "overview, drill-down, pipeline health");
    assert!(
        report.contains(&format!(
            "{files} dashboards match @grafana/schema's Dashboard type"
        )),
        "{report}"
    );
    // The chart ships every dashboard in its ConfigMap.
    let manifests = ok(helm().args([
        "template",
        "hg",
        CHART,
        "--show-only",
        "templates/grafana.yaml",
    ]));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            manifests.contains(&format!("hourglass-{file}: |-")),
            "{file} not in the dashboards ConfigMap"
        );
    }
}

/// `hourglass_*` metric names in `text` (a `_bucket` suffix kept).
fn metric_names(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .match_indices("hourglass_")
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Every component's metrics module, where each metric name is defined.
fn exported_metrics() -> String {
    let mut exported = String::new();
    for krate in ["ingest", "aggregator", "loader", "lake", "query", "batch"] {
        exported += &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(krate)
                .join("src/metrics.rs"),
        )
        .unwrap();
    }
    exported
}

/// The alert rules as the chart renders them (default thresholds), run
/// through `promtool test rules` with tests/chart/alerts.test.yaml: each
/// rule fires where it should and stays quiet where it should, annotations
/// included; and every metric they read is one a component exports.
#[test]
fn alert_rules_pass_their_promtool_tests() {
    let scratch = std::env::temp_dir().join(format!("hg_alerts_{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let manifests = ok(helm().args([
        "template",
        "hg",
        CHART,
        "--namespace",
        "analytics",
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]));
    let rendered = scratch.join("rendered.yaml");
    std::fs::write(&rendered, &manifests).unwrap();
    ok(Command::new("node")
        .arg(Path::new(CHECKS).join("extract_rules.mjs"))
        .arg(&rendered)
        .arg(scratch.join("rules.yaml")));
    let tests = std::fs::read_to_string(Path::new(CHECKS).join("alerts.test.yaml")).unwrap();
    std::fs::write(scratch.join("alerts.test.yaml"), &tests).unwrap();
    let promtool = std::env::var("HOURGLASS_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let checked = ok(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(scratch.join("rules.yaml")));
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let report = ok(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(scratch.join("alerts.test.yaml")));
    assert!(report.contains("SUCCESS"), "{report}");
    // Each alert has a case where it fires and one where it stays quiet.
    let alerts: Vec<&str> = manifests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 11, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = tests
            .split("- alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert} has no quiet case"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{alert} has no firing case"
        );
    }
    let exported = exported_metrics();
    // The lag recording rule names its three metrics by one regex.
    let lag_metrics = ["aggregator", "loader", "archiver"]
        .map(|c| format!("hourglass_{c}_consumer_lag_messages"));
    let names = metric_names(&manifests)
        .into_iter()
        .filter(|n| *n != "hourglass_")
        .map(str::to_owned)
        .chain(lag_metrics);
    for name in names {
        assert!(
            exported.contains(&format!("\"{name}\"")),
            "the rules read {name}, which no component exports"
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn pipeline_dashboard_uses_only_metrics_the_components_export() {
    let dashboard =
        std::fs::read_to_string(Path::new(CHART).join("dashboards/pipeline-health.json")).unwrap();
    let exported = exported_metrics();
    let names = metric_names(&dashboard);
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            exported.contains(&format!("\"{base}\"")),
            "{name} is not a metric of any component"
        );
        if name.ends_with("_bucket") {
            assert!(
                base.ends_with("_seconds"),
                "{name}: only *_seconds metrics are histograms"
            );
        }
    }
}
