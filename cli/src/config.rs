//! Configuration of `nexus standalone`: defaults in code → YAML file (`--config`) →
//! `NEXUS__SECTION__KEY` environment variables → command-line flags, then [`StandaloneConfig::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use nexus_http::server::ServerConfig;
use nexus_receiver::ReceiverConfig;
use nexus_scheduler::SchedulerConfig;
use nexus_scheduler::edge::EdgeLimitConfig;
use nexus_supervisor::SupervisorConfig;
use serde::{Deserialize, Serialize};

use crate::sandbox::Confine;

/// Local-process executor settings (section `executor`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSection {
    /// Directories prepended to `PATH` for algorithm processes. Empty: the directory of the
    /// `nexus` binary (where `cargo build` also puts the demo algorithms).
    pub extra_path: Vec<PathBuf>,
    /// Concurrent runs per workgroup when the workgroup sets no `maxConcurrentRuns`.
    pub default_max_concurrent: u32,
    /// Captured stdout+stderr per run (the tail is kept).
    pub max_log_bytes: usize,
    /// Parent of the runs' private work directories (one per run, `0700`, removed when the run
    /// finishes). Default `<temp dir>/nexus-work-<uid>`; it must lie outside the data directory.
    pub work_root: Option<PathBuf>,
    /// The user algorithms run as (`name`, `uid`, `name:group` or `uid:gid`) when nexus runs as
    /// root; nexus refuses to start with it when it is not root.
    pub run_as: Option<String>,
    /// Filesystem confinement of algorithms: `auto` (Landlock where the kernel offers it),
    /// `landlock` (refuse to start without it) or `off`.
    pub confine: Confine,
    /// Extra paths confined algorithms may read (interpreters, models); `PATH` and the system
    /// directories are always readable.
    pub read_only_paths: Vec<PathBuf>,
    /// Extra paths confined algorithms may write (besides their own work directory).
    pub read_write_paths: Vec<PathBuf>,
    /// The `nexus` binary that confines algorithms (`nexus sandbox-exec`); default this one.
    pub launcher: Option<PathBuf>,
    /// CA certificate (PEM) algorithms trust for Nexus's own URLs (payload, result upload,
    /// completion, child runs): handed to them as `NEXUS_CA_FILE` and readable under
    /// confinement. Set it when `server.tls` serves a certificate from a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        Self {
            extra_path: Vec::new(),
            default_max_concurrent: 8,
            max_log_bytes: 1024 * 1024,
            work_root: None,
            run_as: None,
            confine: Confine::Auto,
            read_only_paths: Vec::new(),
            read_write_paths: Vec::new(),
            launcher: None,
            ca_file: None,
        }
    }
}

/// Configuration of `nexus standalone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandaloneConfig {
    /// Address of the HTTP API (scheduler and receiver on one port). Loopback by default; any
    /// other address needs `auth` configured (or `auth.mode: none` written explicitly).
    pub listen: SocketAddr,
    /// URL algorithms and clients use to reach this process; default `http://<listen>`.
    pub public_url: Option<String>,
    /// Run store, payloads, results, logs and the signing key live here.
    pub data_dir: PathBuf,
    /// Where run records live: `embedded` (a SQLite file in `data_dir`, the default) or a
    /// `cassandra://host:9042/keyspace?...` URL (Apache Cassandra, ScyllaDB; see
    /// `nexus store --help`). Payloads stay in `data_dir` either way.
    pub store: String,
    /// Where payloads, results and logs live: `embedded` (files and `objects.db` in `data_dir`,
    /// served by Nexus through signed URLs; the default) or an S3 URL
    /// `s3://bucket/prefix?endpoint=…&region=…` (also `s3a://`): algorithms then read and write
    /// through presigned S3 URLs.
    pub payloads: String,
    /// Directory of `NexusAlgorithmTemplate` / `NexusAlgorithmWorkgroup` YAML manifests.
    pub templates_dir: PathBuf,
    /// How often the templates directory is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Receiver settings.
    pub receiver: ReceiverConfig,
    /// Supervisor settings.
    pub supervisor: SupervisorConfig,
    /// Executor settings.
    pub executor: ExecutorSection,
    /// Per-client rate limiting of the scheduler API (off by default).
    pub rate_limit: EdgeLimitConfig,
    /// Connection limit, timeouts and TLS of the HTTP server.
    pub server: ServerConfig,
    /// Who may call the API (authentication, rules); see `docs/AUTH.md`.
    pub auth: nexus_auth::AuthConfig,
    /// Largest object an algorithm may upload through its result URL, in bytes (413 past it).
    pub max_result_bytes: u64,
}

/// Default of [`StandaloneConfig::max_result_bytes`]: 1 GiB.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1024 * 1024 * 1024;

impl Default for StandaloneConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            public_url: None,
            data_dir: PathBuf::from(".nexus-data"),
            store: "embedded".into(),
            payloads: "embedded".into(),
            templates_dir: PathBuf::from("examples/templates"),
            reload_interval: Duration::from_secs(2),
            log_format: "text".into(),
            scheduler: SchedulerConfig::default(),
            receiver: ReceiverConfig::default(),
            supervisor: SupervisorConfig {
                exclusive_store: true,
                ..SupervisorConfig::default()
            },
            executor: ExecutorSection::default(),
            rate_limit: EdgeLimitConfig::default(),
            server: ServerConfig::default(),
            auth: nexus_auth::AuthConfig::default(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Flag overrides (only the ones given).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--store`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// `--payloads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payloads: Option<String>,
    /// `--templates`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates_dir: Option<PathBuf>,
    /// `--public-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// Which run store standalone uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite file in the data directory.
    Embedded,
    /// Cassandra / ScyllaDB.
    Cassandra(Box<nexus_store::cassandra::CassandraConfig>),
}

/// Which payload store standalone uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadsKind {
    /// Files and SQLite in the data directory.
    Embedded,
    /// An S3 bucket (AWS or any S3-compatible server).
    S3(Box<nexus_payload::S3Config>),
}

impl StandaloneConfig {
    /// Parses [`StandaloneConfig::payloads`].
    ///
    /// # Errors
    /// What is wrong with the URL.
    pub fn payloads_kind(&self) -> Result<PayloadsKind, String> {
        let s = self.payloads.trim();
        if s == "embedded" || s.is_empty() {
            return Ok(PayloadsKind::Embedded);
        }
        if s.starts_with("s3://") || s.starts_with("s3a://") {
            return nexus_payload::S3Config::from_url(s).map(|c| PayloadsKind::S3(Box::new(c)));
        }
        Err(format!(
            "'{s}' is neither 'embedded' nor an s3://bucket/prefix URL"
        ))
    }

    /// Parses [`StandaloneConfig::store`].
    ///
    /// # Errors
    /// What is wrong with the URL.
    pub fn store_kind(&self) -> Result<StoreKind, String> {
        let s = self.store.trim();
        if s == "embedded" || s.is_empty() {
            return Ok(StoreKind::Embedded);
        }
        if s.starts_with("cassandra://") || s.starts_with("scylla://") {
            return nexus_store::cassandra::CassandraConfig::from_url(s)
                .map(|c| StoreKind::Cassandra(Box::new(c)));
        }
        Err(format!(
            "'{s}' is neither 'embedded' nor a cassandra://host:9042/keyspace URL"
        ))
    }

    /// Loads the layered configuration.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, wrong types, invalid values — each naming the key.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, String> {
        load(file, overrides)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// All problems, each naming its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if !matches!(self.log_format.as_str(), "text" | "json") {
            e.push(format!(
                "log_format: '{}' must be text or json",
                self.log_format
            ));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            e.push(format!(
                "public_url: '{u}' must start with http:// or https://"
            ));
        }
        if let Err(m) = self.store_kind() {
            e.push(format!("store: {m}"));
        }
        if let Err(m) = self.payloads_kind() {
            e.push(format!("payloads: {m}"));
        }
        if self.reload_interval < Duration::from_millis(10) {
            e.push("reload_interval: must be at least 10ms".into());
        }
        if self.executor.default_max_concurrent == 0 {
            e.push("executor.default_max_concurrent: must be at least 1".into());
        }
        if let Some(root) = &self.executor.work_root
            && inside(root, &self.data_dir)
        {
            e.push(format!(
                "executor.work_root: {} lies in the data directory {}: algorithms would work next to the server's keys and stores; choose a directory outside it",
                root.display(),
                self.data_dir.display()
            ));
        }
        if self.max_result_bytes == 0 {
            e.push("max_result_bytes: must be at least 1 (bytes)".into());
        }
        if let Err(m) = check_auth_listen(&self.auth, self.listen) {
            e.push(m);
        }
        for r in [
            self.server.validate("server"),
            self.auth.validate(),
            self.scheduler.validate(),
            self.receiver.validate(),
            self.supervisor.validate(),
            self.rate_limit.validate(),
        ] {
            if let Err(m) = r {
                e.push(m);
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// Refuses to serve the API beyond loopback without authentication unless `auth.mode: none` is
/// written: an unset `auth` section means "no authentication" only on loopback.
///
/// # Errors
/// The message saying what to configure.
pub fn check_auth_listen(auth: &nexus_auth::AuthConfig, listen: SocketAddr) -> Result<(), String> {
    if auth.effective_mode().is_none() && !listen.ip().is_loopback() {
        return Err(format!(
            "auth: listen {listen} is reachable from other machines, but no authentication is configured; \
             configure auth.oidc and/or auth.api_keys with auth.rules (docs/AUTH.md), or write auth.mode: none \
             to serve without authentication (e.g. behind an authenticating gateway)"
        ));
    }
    Ok(())
}

/// Logs the start-up warning of `auth.mode: none` on a non-loopback address.
pub fn warn_if_open(auth: &nexus_auth::AuthConfig, listen: SocketAddr) {
    if auth.effective_mode() == Some(nexus_auth::AuthMode::None) && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "auth.mode is none and the API listens beyond loopback: anyone who reaches {listen} may submit, \
             read and cancel every run; put an authenticating gateway in front or configure auth (docs/AUTH.md)"
        );
    }
}

/// Whether `path` is `dir` or lies in it (compared as absolute, canonical where they exist).
fn inside(path: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    abs(path).starts_with(abs(dir))
}

/// A process configuration: defaults in code, then [`Layered::validate`] after layering.
pub trait Layered: Serialize + serde::de::DeserializeOwned + Default {
    /// Checks every value.
    ///
    /// # Errors
    /// All problems, each naming its key and what would be valid, joined by `; `.
    fn validate(&self) -> Result<(), String>;
}

impl Layered for StandaloneConfig {
    fn validate(&self) -> Result<(), String> {
        StandaloneConfig::validate(self)
    }
}

/// Loads a process configuration: its defaults → the YAML `file` → `NEXUS__SECTION__KEY`
/// environment variables → `overrides` (flags), then validates it (the one loader of every
/// command's configuration).
///
/// # Errors
/// Unreadable file, unknown keys, wrong types, invalid values — each naming the key.
pub fn load<C: Layered>(file: Option<&Path>, overrides: &impl Serialize) -> Result<C, String> {
    let c: C = load_layered(C::default(), file, overrides)?;
    c.validate()?;
    Ok(c)
}

/// Layers `defaults` → the YAML `file` → `NEXUS__SECTION__KEY` environment variables →
/// `overrides` (flags) and extracts the result (every command's configuration loads this way).
///
/// # Errors
/// Missing file, unknown keys, wrong types — each naming the key.
pub fn load_layered<T: Serialize + serde::de::DeserializeOwned>(
    defaults: T,
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<T, String> {
    let mut fig = Figment::from(Serialized::defaults(defaults));
    if let Some(f) = file {
        if !f.is_file() {
            return Err(format!("config file {} does not exist", f.display()));
        }
        fig = fig.merge(Yaml::file(f));
    }
    fig = fig
        .merge(Env::prefixed("NEXUS__").split("__"))
        .merge(Serialized::defaults(overrides));
    fig.extract().map_err(|e| {
        e.into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_flags_layer_over_defaults() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("nexus.yaml");
        std::fs::write(
            &f,
            "listen: 127.0.0.1:9000\nscheduler:\n  queue_bound: 7\n  retry_base_delay: 1s\n",
        )
        .unwrap();
        let o = Overrides {
            data_dir: Some("/tmp/x".into()),
            ..Overrides::default()
        };
        let c = StandaloneConfig::load(Some(&f), &o).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.scheduler.queue_bound, 7);
        assert_eq!(c.scheduler.retry_base_delay, Duration::from_secs(1));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert!(
            !c.rate_limit.enabled,
            "rate limiting is off unless asked for"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("nexus.yaml");
        std::fs::write(&f, "scheduler:\n  queue_bund: 7\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("queue_bund"), "{e}");
        std::fs::write(&f, "scheduler:\n  retry_base_delay: soon\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("retry_base_delay"), "{e}");
        std::fs::write(&f, "rate_limit:\n  enabled: true\n  per_second: 0\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(
            e.contains("rate_limit.per_second: must be at least 1"),
            "{e}"
        );
        std::fs::write(&f, "rate_limit:\n  key: client_id\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("peer_ip"), "{e}");
        std::fs::write(&f, "log_format: xml\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("log_format"), "{e}");
        std::fs::write(
            &f,
            "server:\n  max_connections: 0\n  body_idle_timeout: 1ms\nmax_result_bytes: 0\n",
        )
        .unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("server.max_connections: 0 must be"), "{e}");
        assert!(e.contains("server.body_idle_timeout: 1ms must be"), "{e}");
        assert!(e.contains("max_result_bytes: must be at least 1"), "{e}");
        std::fs::write(&f, "server:\n  max_conections: 5\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn executor_keys_are_read_and_a_work_root_in_the_data_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("nexus.yaml");
        let data = d.path().join("data");
        std::fs::write(
            &f,
            format!(
                "data_dir: {0}\nexecutor:\n  run_as: nobody\n  confine: landlock\n  work_root: {0}/work\n",
                data.display()
            ),
        )
        .unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("executor.work_root"), "{e}");
        std::fs::write(
            &f,
            "executor:\n  run_as: nobody\n  confine: landlock\n  work_root: /var/tmp/nexus-work\n",
        )
        .unwrap();
        let c = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(c.executor.run_as.as_deref(), Some("nobody"));
        assert_eq!(c.executor.confine, Confine::Landlock);
        std::fs::write(&f, "executor:\n  confine: maybe\n").unwrap();
        let e = StandaloneConfig::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.contains("confine"), "{e}");
    }

    #[test]
    fn store_url_is_checked() {
        let mut c = StandaloneConfig::default();
        assert_eq!(c.store_kind().unwrap(), StoreKind::Embedded);
        c.store = "cassandra://127.0.0.1:9042/nexus?dc=dc1".into();
        match c.store_kind().unwrap() {
            StoreKind::Cassandra(cc) => {
                assert_eq!(cc.keyspace, "nexus");
                assert_eq!(cc.local_datacenter.as_deref(), Some("dc1"));
            }
            StoreKind::Embedded => panic!("not cassandra"),
        }
        c.store = "postgres://db/x".into();
        let e = c.validate().unwrap_err();
        assert!(e.contains("store: 'postgres://db/x' is neither"), "{e}");
        c.store = "cassandra://h/ks?consistency=lots".into();
        let e = c.validate().unwrap_err();
        assert!(e.starts_with("store: consistency 'lots'"), "{e}");
    }

    #[test]
    fn payloads_url_is_checked() {
        let mut c = StandaloneConfig::default();
        assert_eq!(c.payloads_kind().unwrap(), PayloadsKind::Embedded);
        c.payloads = "s3a://bucket/pre?endpoint=http://127.0.0.1:8333".into();
        match c.payloads_kind().unwrap() {
            PayloadsKind::S3(s3) => assert_eq!(s3.bucket, "bucket"),
            PayloadsKind::Embedded => panic!("not s3"),
        }
        c.payloads = "gs://bucket".into();
        let e = c.validate().unwrap_err();
        assert!(e.contains("payloads: 'gs://bucket' is neither"), "{e}");
    }
}
