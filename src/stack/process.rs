//! Installing, starting, probing and stopping one local server.

use crate::out::outln;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub enum Install {
    /// `cargo install KRATE --locked --features FEATURES` (kept in ~/.cargo/bin).
    Cargo {
        krate: &'static str,
        features: &'static str,
    },
    /// Debian packages, through apt-get.
    Apt(&'static [&'static str]),
}

pub enum Ready {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers with this status.
    HttpStatus(&'static str, u16),
    /// `GET path` answers 200 with this body (trimmed).
    HttpBody(&'static str, &'static str),
    /// A TCP request (ZooKeeper's four-letter words) answered with a reply
    /// that contains this text.
    TcpReply(&'static str, &'static str),
}

pub struct Server {
    /// For people: named in every error.
    pub name: String,
    /// For files: `DIR/KEY/` holds its data, log and PID file.
    pub key: String,
    /// A program on the PATH, or an absolute path.
    pub binary: &'static str,
    pub install: Install,
    pub port: u16,
    pub args: Vec<String>,
    pub ready: Ready,
}

pub fn port_of(address: &str) -> Option<u16> {
    let without_path = address.split("://").last()?.split('/').next()?;
    without_path
        .split(',')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

fn find_binary(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The path of `binary`, installed first with `install` when it is missing.
pub fn install_tool(name: &str, binary: &str, install: &Install) -> Result<PathBuf> {
    if let Some(path) = find_binary(binary) {
        return Ok(path);
    }
    eprintln!("{name}: `{binary}` not found, installing it (once)");
    let status = match install {
            Install::Cargo { krate, features } => {
                eprintln!("  cargo install {krate} --locked --features {features}  (tansu takes about 15 minutes)");
                Command::new("cargo")
                    .args(["install", krate, "--locked", "--features", features])
                    .status()
            }
            Install::Apt(packages) => {
                let sudo = !nix::unistd::Uid::effective().is_root();
                let run = |args: &[&str]| {
                    let mut cmd = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
                    if sudo {
                        cmd.arg("apt-get");
                    }
                    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").status()
                };
                run(&["update", "-q"]).and_then(|_| {
                    let mut args = vec!["install", "-y", "-q"];
                    args.extend(packages.iter());
                    run(&args)
                })
            }
        }
        .with_context(|| format!("{}: could not run the installer", name))?;
    if !status.success() {
        bail!("{}: installing `{}` failed ({status})", name, binary);
    }
    find_binary(binary)
        .with_context(|| format!("{}: `{}` still not found after installing", name, binary))
}

impl Server {
    fn dir(&self, root: &Path) -> PathBuf {
        root.join(&self.key)
    }

    pub fn pid_file(&self, root: &Path) -> PathBuf {
        self.dir(root).join("pid")
    }

    pub fn log_file(&self, root: &Path) -> PathBuf {
        self.dir(root).join("server.log")
    }

    pub fn recorded_pid(&self, root: &Path) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(root))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        kill(Pid::from_raw(pid), None).is_ok().then_some(pid)
    }

    pub async fn answers(&self) -> bool {
        let addr = ("127.0.0.1", self.port);
        match self.ready {
            Ready::Tcp => tokio::net::TcpStream::connect(addr).await.is_ok(),
            Ready::HttpStatus(path, status) => http_get(self.port, path)
                .await
                .is_some_and(|(code, _)| code == status),
            Ready::HttpBody(path, body) => http_get(self.port, path)
                .await
                .is_some_and(|(code, text)| code == 200 && text.trim() == body),
            Ready::TcpReply(request, reply) => tcp_exchange(self.port, request)
                .await
                .is_some_and(|text| text.contains(reply)),
        }
    }

    fn install(&self) -> Result<PathBuf> {
        install_tool(&self.name, self.binary, &self.install)
    }

    /// Reuse, or install and start, then wait until it answers.
    pub async fn ensure_running(&self, root: &Path) -> Result<()> {
        if self.answers().await {
            return Ok(());
        }
        let binary = self.install()?;
        let dir = self.dir(root);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(root))
            .with_context(|| format!("{}: cannot open its log file", self.name))?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&binary)
                .args(&self.args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: it outlives this command and a Ctrl-C here.
                .process_group(0)
                .spawn()
                .with_context(|| format!("{}: could not start {}", self.name, binary.display()))?
        };
        std::fs::write(self.pid_file(root), child.id().to_string())?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self.answers().await {
                eprintln!(
                    "{}: started (pid {}) in {:?}",
                    self.name,
                    child.id(),
                    started.elapsed()
                );
                return Ok(());
            }
            if kill(Pid::from_raw(child.id() as i32), None).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log_text = std::fs::read_to_string(self.log_file(root)).unwrap_or_default();
        let tail: Vec<&str> = log_text.lines().rev().take(15).collect();
        bail!(
            "{} did not start on port {} (log {}):\n{}",
            self.name,
            self.port,
            self.log_file(root).display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn stop(&self, root: &Path) -> Result<()> {
        let Some(pid) = self.recorded_pid(root) else {
            return Ok(());
        };
        let pid = Pid::from_raw(pid);
        kill(pid, Signal::SIGTERM)
            .with_context(|| format!("{}: cannot signal pid {pid}", self.name))?;
        let started = Instant::now();
        while kill(pid, None).is_ok() {
            if started.elapsed() > Duration::from_secs(15) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.pid_file(root));
        outln!("{}: stopped (pid {pid})", self.name);
        Ok(())
    }
}

async fn tcp_exchange(port: u16, request: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn ports_are_read_from_addresses() {
        assert_eq!(port_of("127.0.0.1:19092"), Some(19092));
        assert_eq!(port_of("http://127.0.0.1:18123"), Some(18123));
        assert_eq!(port_of("http://127.0.0.1:19014/"), Some(19014));
        assert_eq!(port_of("a:1,b:2"), Some(1));
    }
}
