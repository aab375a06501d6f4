//! Write keys: which project a request speaks for.
//!
//! Only SHA-256 hashes of keys are configured. A presented key is hashed and
//! compared with every configured hash in constant time, all of them, so
//! neither the comparison nor the search leaks how close a guess came.

use std::path::Path;
use std::sync::Arc;

use hourglass_core::config::{IngestConfig, WriteKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("write key of project {project:?}: `sha256` must be 64 hex digits")]
    BadHash { project: String },
    #[error("write key with an empty project_id")]
    EmptyProject,
    #[error("cannot read ingest.keys_file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("ingest.keys_file {path} line {line}: expected `project_id sha256`")]
    FileLine { path: String, line: usize },
    #[error(
        "no write keys configured: add [[ingest.keys]] entries (make one with `hourglass keys new --project NAME`)"
    )]
    None,
}

/// The project a write key belongs to: its index (a cheap rate-limit key)
/// and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub index: usize,
    pub id: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct WriteKeys {
    entries: Vec<([u8; 32], Arc<str>)>,
}

impl WriteKeys {
    /// Keys from `ingest.keys` plus `ingest.keys_file`; at least one is required.
    pub fn from_config(cfg: &IngestConfig) -> Result<Self, KeysError> {
        let mut keys = cfg.keys.clone();
        if !cfg.keys_file.is_empty() {
            keys.extend(read_keys_file(Path::new(&cfg.keys_file))?);
        }
        if keys.is_empty() {
            return Err(KeysError::None);
        }
        let entries = keys
            .into_iter()
            .map(|k| {
                if k.project_id.is_empty() {
                    return Err(KeysError::EmptyProject);
                }
                let mut hash = [0u8; 32];
                hex::decode_to_slice(k.sha256.trim(), &mut hash).map_err(|_| {
                    KeysError::BadHash {
                        project: k.project_id.clone(),
                    }
                })?;
                Ok((hash, Arc::from(k.project_id)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The project of `key`, if it is one of ours.
    pub fn project_for(&self, key: &str) -> Option<Project> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (index, (hash, id)) in self.entries.iter().enumerate() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(Project {
                    index,
                    id: id.clone(),
                });
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn read_keys_file(path: &Path) -> Result<Vec<WriteKey>, KeysError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::File {
        path: shown.clone(),
        source,
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(project), Some(hash), None) => keys.push(WriteKey {
                project_id: project.to_owned(),
                sha256: hash.to_owned(),
            }),
            _ => {
                return Err(KeysError::FileLine {
                    path: shown,
                    line: n + 1,
                });
            }
        }
    }
    Ok(keys)
}

/// Hex SHA-256 of a key: what goes into the config.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random write key (192 bits) and its hash.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("hgk_{}", hex::encode(bytes));
    let hash = hash_key(&key);
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[(&str, &str)]) -> IngestConfig {
        IngestConfig {
            keys: keys
                .iter()
                .map(|(p, k)| WriteKey {
                    project_id: (*p).into(),
                    sha256: hash_key(k),
                })
                .collect(),
            ..IngestConfig::default()
        }
    }

    #[test]
    fn keys_resolve_to_their_project() {
        let keys = WriteKeys::from_config(&config(&[("shop", "k1"), ("blog", "k2")])).unwrap();
        assert_eq!(keys.project_for("k2").unwrap().id.as_ref(), "blog");
        assert_eq!(keys.project_for("k1").unwrap().index, 0);
        assert!(keys.project_for("k3").is_none());
        assert!(keys.project_for("").is_none());
    }

    #[test]
    fn new_keys_hash_to_what_they_print() {
        let (key, hash) = new_key();
        assert!(key.starts_with("hgk_") && key.len() == 52);
        assert_eq!(hash, hash_key(&key));
        let mut cfg = config(&[]);
        cfg.keys.push(WriteKey {
            project_id: "p".into(),
            sha256: hash,
        });
        assert!(
            WriteKeys::from_config(&cfg)
                .unwrap()
                .project_for(&key)
                .is_some()
        );
    }

    #[test]
    fn bad_configuration_is_named() {
        assert!(matches!(
            WriteKeys::from_config(&config(&[])),
            Err(KeysError::None)
        ));
        let mut cfg = config(&[]);
        cfg.keys.push(WriteKey {
            project_id: "p".into(),
            sha256: "abc".into(),
        });
        assert!(matches!(
            WriteKeys::from_config(&cfg),
            Err(KeysError::BadHash { .. })
        ));
    }

    #[test]
    fn keys_file_is_read() {
        let dir = std::env::temp_dir().join(format!("hg-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(
            &path,
            format!("# rotated 2026-11\nshop {}\n\n", hash_key("secret")),
        )
        .unwrap();
        let cfg = IngestConfig {
            keys_file: path.display().to_string(),
            ..IngestConfig::default()
        };
        let keys = WriteKeys::from_config(&cfg).unwrap();
        assert_eq!(keys.project_for("secret").unwrap().id.as_ref(), "shop");
        std::fs::write(&path, "just-one-field\n").unwrap();
        assert!(matches!(
            WriteKeys::from_config(&cfg),
            Err(KeysError::FileLine { line: 1, .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
