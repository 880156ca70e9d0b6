//! Static API keys for service accounts, kept only as SHA-256 hashes.
//!
//! A key is a random secret (`nxk_` + 43 base64url characters, 256 bits; see [`generate`]).
//! The configuration holds `{name, sha256, groups}`; a presented key is hashed and looked up.
//! Plain SHA-256 suffices because keys are random, not passwords: nothing is gained by guessing
//! from a list. Files (`auth.api_keys.files`, e.g. a mounted Secret) are read at start and again
//! whenever they change, so keys are added or revoked without a restart; a file that no longer
//! parses keeps the keys last loaded, with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{ApiKeyEntry, ApiKeysConfig};
use crate::{Method, Principal};

/// Prefix of generated keys (lets secret scanners and people recognise them).
pub const KEY_PREFIX: &str = "nxk_";

/// Returns a new random key.
#[must_use]
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Returns the lowercase hex SHA-256 of `key` (what the configuration stores).
#[must_use]
pub fn hash(key: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(key.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("auth.api_keys: {0}")]
pub struct KeyFileError(String);

type Table = HashMap<String, Principal>;

/// The configured keys, by hash.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    table: Arc<RwLock<Arc<Table>>>,
    config: ApiKeysConfig,
}

fn read_file(path: &Path) -> Result<Vec<ApiKeyEntry>, KeyFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyFileError(format!("{}: cannot read: {e}", path.display())))?;
    // A file is a list of entries, or `{keys: [...]}` (the section's own shape).
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        keys: Vec<ApiKeyEntry>,
    }
    let entries = serde_yaml::from_str::<Vec<ApiKeyEntry>>(&text)
        .or_else(|_| serde_yaml::from_str::<Doc>(&text).map(|d| d.keys))
        .map_err(|e| {
            KeyFileError(format!(
                "{}: not a list of {{name, sha256, groups}}: {e}",
                path.display()
            ))
        })?;
    for (i, k) in entries.iter().enumerate() {
        k.validate()
            .map_err(|m| KeyFileError(format!("{}: entry {i}: {m}", path.display())))?;
    }
    Ok(entries)
}

fn build(config: &ApiKeysConfig) -> Result<Table, KeyFileError> {
    let mut entries = config.keys.clone();
    for f in &config.files {
        entries.extend(read_file(f)?);
    }
    let mut table = Table::new();
    for k in entries {
        let digest = k.sha256.to_ascii_lowercase();
        if let Some(prev) = table.get(&digest) {
            return Err(KeyFileError(format!(
                "the same key hash is listed for '{}' and '{}'",
                prev.subject, k.name
            )));
        }
        table.insert(
            digest,
            Principal {
                subject: k.name,
                groups: k.groups,
                method: Method::ApiKey,
            },
        );
    }
    Ok(table)
}

impl ApiKeys {
    /// Loads the keys of `config` (its files too).
    ///
    /// # Errors
    /// A file cannot be read or parsed, an entry is invalid, or a hash is listed twice.
    pub fn load(config: &ApiKeysConfig) -> Result<Self, KeyFileError> {
        Ok(Self {
            table: Arc::new(RwLock::new(Arc::new(build(config)?))),
            config: config.clone(),
        })
    }

    /// No keys.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            table: Arc::default(),
            config: ApiKeysConfig::default(),
        }
    }

    /// True when no key source is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.config.is_configured()
    }

    /// Returns who `key` authenticates, if it is a configured key.
    #[must_use]
    pub fn lookup(&self, key: &str) -> Option<Principal> {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        table.get(&hash(key)).cloned()
    }

    /// Reloads the key files when they change (checked every `every`), until `stop`. The
    /// files' state is taken when this is called, not when the future first runs.
    pub fn watch(
        self,
        every: Duration,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stamps = |files: &[PathBuf]| {
            files
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                })
                .collect::<Vec<_>>()
        };
        let mut seen = stamps(&self.config.files);
        async move {
            if self.config.files.is_empty() {
                return;
            }
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = stamps(&self.config.files);
                if now == seen {
                    continue;
                }
                seen = now;
                match build(&self.config) {
                    Ok(t) => {
                        let n = t.len();
                        *self
                            .table
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(t);
                        tracing::info!(keys = n, "API keys reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "API key files changed but do not load; keeping the keys loaded before")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_only() {
        let key = generate();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == 47, "{key}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        std::fs::write(
            &file,
            format!("- name: ci\n  sha256: {}\n  groups: [team-a]\n", hash(&key)),
        )
        .unwrap();
        let keys = ApiKeys::load(&ApiKeysConfig {
            keys: vec![],
            files: vec![file],
        })
        .unwrap();
        let p = keys.lookup(&key).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.groups.as_slice()),
            ("ci", &["team-a".to_owned()][..])
        );
        assert!(keys.lookup(&hash(&key)).is_none(), "the hash is not a key");
        assert!(keys.lookup("nxk_wrong").is_none());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        std::fs::write(&file, "- name: ci\n  sha256: plaintext-key\n").unwrap();
        let e = ApiKeys::load(&ApiKeysConfig {
            keys: vec![],
            files: vec![file.clone()],
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("keys.yaml: entry 0: sha256 of 'ci'"), "{e}");
        let missing = ApiKeys::load(&ApiKeysConfig {
            keys: vec![],
            files: vec![dir.path().join("nope.yaml")],
        })
        .unwrap_err()
        .to_string();
        assert!(missing.contains("nope.yaml: cannot read"), "{missing}");
    }

    #[tokio::test]
    async fn changed_files_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.yaml");
        let (k1, k2) = (generate(), generate());
        std::fs::write(
            &file,
            format!("keys: [{{name: one, sha256: {}}}]\n", hash(&k1)),
        )
        .unwrap();
        let keys = ApiKeys::load(&ApiKeysConfig {
            keys: vec![],
            files: vec![file.clone()],
        })
        .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keys.clone().watch(Duration::from_millis(20), stop.clone()));
        // A longer file: the size changes even when the mtime granularity is coarse.
        std::fs::write(
            &file,
            format!("keys: [{{name: two-revoked-one, sha256: {}}}]\n", hash(&k2)),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while keys.lookup(&k2).is_none() {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keys.lookup(&k1).is_none(), "the removed key is revoked");
        stop.cancel();
        task.await.unwrap();
    }
}
