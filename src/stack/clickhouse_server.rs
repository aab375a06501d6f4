//! Debian's clickhouse-server as a plain process with a generated config:
//! one server for the usual stack, or the servers of the cluster profile
//! ([`super::cluster`]).

use std::path::Path;

use anyhow::Result;

use super::process::{Install, Ready, Server};

/// Native protocol port: the HTTP port's neighbour in our range.
fn native_port(http_port: u16) -> u16 {
    http_port.wrapping_add(877)
}

/// The single server of the usual stack.
pub fn server(root: &Path, http_port: u16, write_configs: bool) -> Result<Server> {
    let ports = Ports {
        http: http_port,
        native: native_port(http_port),
        interserver: None,
    };
    node(root, "ClickHouse", "clickhouse", ports, "", write_configs)
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub native: u16,
    /// Replicas fetch parts from each other here (cluster servers only).
    pub interserver: Option<u16>,
}

/// One server: `extra` is XML added to its config (a cluster server's
/// ZooKeeper, macros and `remote_servers`).
pub fn node(
    root: &Path,
    name: &str,
    key: &str,
    ports: Ports,
    extra: &str,
    write_configs: bool,
) -> Result<Server> {
    let dir = root.join(key);
    let d = dir.display();
    let server = Server {
        name: name.to_owned(),
        key: key.to_owned(),
        binary: "clickhouse-server",
        install: Install::Apt(&["clickhouse-server", "clickhouse-client"]),
        port: ports.http,
        args: vec![format!("--config-file={d}/config.xml")],
        ready: Ready::HttpBody("/?query=SELECT%201", "1"),
    };
    if !write_configs {
        return Ok(server);
    }
    for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let interserver = ports.interserver.map_or(String::new(), |port| {
        format!(
            "<interserver_http_port>{port}</interserver_http_port>\n  <interserver_http_host>127.0.0.1</interserver_http_host>"
        )
    });
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog><size>100M</size><count>3</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{native}</tcp_port>
  {interserver}
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
{extra}
</yandex>
"#,
        http = ports.http,
        native = ports.native,
    );
    std::fs::write(dir.join("config.xml"), config)?;
    std::fs::write(dir.join("users.xml"), USERS)?;
    Ok(server)
}

const USERS: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles>
    <default><max_memory_usage>8000000000</max_memory_usage></default>
    <readonly><readonly>1</readonly></readonly>
    <!-- readonly 2: no writes, but a query may still set its own limits
         (the query API sets max_result_rows, max_memory_usage and
         max_execution_time on every read). -->
    <reader><readonly>2</readonly><max_memory_usage>8000000000</max_memory_usage></reader>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <grafana>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>readonly</profile>
      <quota>default</quota>
    </grafana>
    <hourglass_reader>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>reader</profile>
      <quota>default</quota>
    </hourglass_reader>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;
