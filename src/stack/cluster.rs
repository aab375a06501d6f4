//! The cluster profile of the local stack (`hourglass stack up --cluster`):
//! a ZooKeeper (Debian's `zookeeper` package, run in the foreground) and
//! [`SHARDS`] × [`REPLICAS`] ClickHouse 18.16 servers forming the cluster
//! [`CLUSTER`], each with the macros `{shard}` and `{replica}`, on their own
//! ports next to the usual stack. Server `n` (1-based) answers HTTP on
//! `18200 + n`; servers 1..=REPLICAS are shard 1's replicas, and so on.

use std::path::Path;

use anyhow::Result;

use super::clickhouse_server::{self, Ports};
use super::process::{Install, Ready, Server};

pub const CLUSTER: &str = "hourglass";
pub const SHARDS: u16 = 2;
pub const REPLICAS: u16 = 2;
pub const ZOOKEEPER_PORT: u16 = 19181;
const HTTP_BASE: u16 = 18200;
const NATIVE_BASE: u16 = 18210;
const INTERSERVER_BASE: u16 = 18220;

/// One server of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    /// 1-based, across the cluster.
    pub number: u16,
    /// 1-based.
    pub shard: u16,
}

impl Node {
    pub fn http_port(self) -> u16 {
        HTTP_BASE + self.number
    }

    pub fn url(self) -> String {
        format!("http://127.0.0.1:{}", self.http_port())
    }

    pub fn key(self) -> String {
        format!("cluster/ch{}", self.number)
    }
}

pub fn nodes() -> Vec<Node> {
    (1..=SHARDS * REPLICAS)
        .map(|number| Node {
            number,
            shard: (number - 1) / REPLICAS + 1,
        })
        .collect()
}

/// Whether the cluster profile was brought up in this stack folder.
pub fn is_set_up(root: &Path) -> bool {
    root.join("cluster").is_dir()
}

/// ZooKeeper, then every ClickHouse server of the cluster.
pub fn servers(root: &Path, write_configs: bool) -> Result<Vec<Server>> {
    let zk_dir = root.join("cluster").join("zookeeper");
    let zoo_cfg = zk_dir.join("zoo.cfg");
    if write_configs {
        std::fs::create_dir_all(zk_dir.join("data"))?;
        std::fs::write(
            &zoo_cfg,
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={ZOOKEEPER_PORT}\nclientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\nadmin.enableServer=false\nautopurge.purgeInterval=1\n\
                 4lw.commands.whitelist=ruok,srvr\n",
                zk_dir.join("data").display()
            ),
        )?;
    }
    let mut servers = vec![Server {
        name: "ZooKeeper".into(),
        key: "cluster/zookeeper".into(),
        binary: "/usr/share/zookeeper/bin/zkServer.sh",
        install: Install::Apt(&["zookeeper"]),
        port: ZOOKEEPER_PORT,
        args: vec!["start-foreground".into(), zoo_cfg.display().to_string()],
        // Serving, not only listening: ClickHouse gives up on a ZooKeeper
        // that is still loading its data (which answers `ruok` already).
        ready: Ready::TcpReply("srvr", "Mode: standalone"),
    }];
    let remote_servers: String = (1..=SHARDS)
        .map(|shard| {
            let replicas: String = nodes()
                .into_iter()
                .filter(|n| n.shard == shard)
                .map(|n| {
                    format!(
                        "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                        NATIVE_BASE + n.number
                    )
                })
                .collect();
            format!("<shard><internal_replication>true</internal_replication>{replicas}</shard>")
        })
        .collect();
    for node in nodes() {
        let extra = format!(
            "  <zookeeper><node><host>127.0.0.1</host><port>{ZOOKEEPER_PORT}</port></node></zookeeper>\n  \
             <macros><shard>{shard}</shard><replica>ch{number}</replica></macros>\n  \
             <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n  \
             <remote_servers><{CLUSTER}>{remote_servers}</{CLUSTER}></remote_servers>",
            shard = node.shard,
            number = node.number,
        );
        servers.push(clickhouse_server::node(
            root,
            &format!("ClickHouse ch{} (shard {})", node.number, node.shard),
            &node.key(),
            Ports {
                http: node.http_port(),
                native: NATIVE_BASE + node.number,
                interserver: Some(INTERSERVER_BASE + node.number),
            },
            &extra,
            write_configs,
        )?);
    }
    Ok(servers)
}
