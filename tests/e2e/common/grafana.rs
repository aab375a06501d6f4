//! The SQL of the chart's Grafana dashboards, run the way Grafana's
//! ClickHouse plugin would run it: macros expanded for a fixed time range,
//! template variables substituted, as the local stack's read-only `grafana`
//! user.

use std::path::Path;

use serde_json::Value;

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hourglass/dashboards");
const CLICKHOUSE_PLUGIN: &str = "grafana-clickhouse-datasource";

/// One ClickHouse query of a dashboard: a panel target or a template variable.
pub struct DashboardQuery {
    pub origin: String,
    pub sql: String,
}

/// Every ClickHouse query of every dashboard, raw (macros unexpanded).
pub fn clickhouse_queries() -> Vec<DashboardQuery> {
    let mut files: Vec<_> = std::fs::read_dir(DASHBOARDS)
        .expect("dashboards folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = Path::new(&file)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["type"] == "query" && var["datasource"]["type"] == CLICKHOUSE_PLUGIN {
                out.push(DashboardQuery {
                    origin: format!("{name}: variable ${}", var["name"].as_str().unwrap()),
                    sql: var["query"].as_str().unwrap().to_owned(),
                });
            }
        }
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["datasource"]["type"] == CLICKHOUSE_PLUGIN {
                    out.push(DashboardQuery {
                        origin: format!("{name}: panel {:?}", panel["title"].as_str().unwrap()),
                        sql: target["rawSql"].as_str().expect("rawSql").to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// The plugin's macros for the range [from, to] (Unix seconds), then the
/// dashboard's variables (`${name}` and `$name`).
pub fn expand(sql: &str, from: i64, to: i64, variables: &[(&str, &str)]) -> String {
    let mut out = expand_time_filters(sql, from, to)
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("$__interval_s", "60");
    for (name, value) in variables {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$'),
        "a macro or variable was left unexpanded: {out}"
    );
    out
}

/// `$__timeFilter(col)` → `col >= toDateTime(from) AND col <= toDateTime(to)`.
fn expand_time_filters(sql: &str, from: i64, to: i64) -> String {
    const MACRO: &str = "$__timeFilter(";
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find(MACRO) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MACRO.len()..];
        let close = after.find(')').expect("closing parenthesis");
        let column = after[..close].trim();
        out.push_str(&format!(
            "{column} >= toDateTime({from}) AND {column} <= toDateTime({to})"
        ));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Run `sql` over HTTP as the read-only `grafana` user; the rows as TSV.
pub async fn query_as_grafana(url: &str, database: &str, sql: &str) -> Result<String, String> {
    let response = reqwest::Client::new()
        .post(url)
        .query(&[("database", database), ("user", "grafana")])
        .body(sql.to_owned())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Every dashboard query, expanded, runs as `grafana` and returns rows.
pub async fn assert_every_query_returns_rows(
    url: &str,
    database: &str,
    from: i64,
    to: i64,
    variables: &[(&str, &str)],
) -> usize {
    let queries = clickhouse_queries();
    assert!(queries.len() >= 15, "the dashboards' ClickHouse queries");
    let mut failures = Vec::new();
    for q in &queries {
        let sql = expand(&q.sql, from, to, variables);
        match query_as_grafana(url, database, &sql).await {
            Ok(rows) if rows.lines().any(|l| !l.trim().is_empty()) => {}
            Ok(_) => failures.push(format!("{}: no rows\n  {sql}", q.origin)),
            Err(e) => failures.push(format!("{}: {e}\n  {sql}", q.origin)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    queries.len()
}
