//! Configuration of the Cassandra / ScyllaDB run store, from a `cassandra://` URL.
//!
//! ```text
//! cassandra://[user[:password]@]host[:port][,host[:port]...]/keyspace[?option=value&...]
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `dc` | none | local datacenter: preferred by load balancing, `LOCAL_*` consistency counts it |
//! | `consistency` | `local_quorum` | reads and writes: `one`, `local_one`, `quorum`, `local_quorum`, `each_quorum`, `all` |
//! | `serial` | `local_serial` | lightweight transactions: `serial` or `local_serial` |
//! | `replication` | `SimpleStrategy:1` | for `CREATE KEYSPACE`: `SimpleStrategy:<rf>` or `NetworkTopologyStrategy:<dc>=<rf>[;<dc>=<rf>...]` |
//! | `retention` | `7d` | finished runs and their lookup rows expire this long after they finish |
//! | `timeout` | `5s` | client-side request timeout |
//! | `connect_timeout` | `5s` | connection set-up timeout |
//! | `migrate` | `true` | apply the schema migrations at start-up |
//! | `tls` | `false` | TLS to every node; `ca` names a PEM bundle (else the system roots) |
//! | `ca`, `cert`, `key` | none | PEM files: CA bundle; client certificate and key for mutual TLS |
//! | `tls_server_name` | the host | name checked against the nodes' certificates |
//!
//! The password may also come from `NEXUS_CASSANDRA_PASSWORD` (preferred over the URL, which ends
//! up in shell histories and process listings).

use nexus_model::secret::Secret;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Consistency of ordinary reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// One replica.
    One,
    /// One replica in the local datacenter.
    LocalOne,
    /// A majority of all replicas.
    Quorum,
    /// A majority of the local datacenter's replicas (default).
    LocalQuorum,
    /// A majority in every datacenter.
    EachQuorum,
    /// Every replica.
    All,
}

impl Consistency {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "one" => Self::One,
            "local_one" => Self::LocalOne,
            "quorum" => Self::Quorum,
            "local_quorum" => Self::LocalQuorum,
            "each_quorum" => Self::EachQuorum,
            "all" => Self::All,
            other => {
                return Err(format!(
                    "consistency '{other}' is not one of one, local_one, quorum, local_quorum, each_quorum, all"
                ));
            }
        })
    }

    /// The driver's value.
    #[must_use]
    pub fn driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as C;
        match self {
            Self::One => C::One,
            Self::LocalOne => C::LocalOne,
            Self::Quorum => C::Quorum,
            Self::LocalQuorum => C::LocalQuorum,
            Self::EachQuorum => C::EachQuorum,
            Self::All => C::All,
        }
    }
}

/// Consistency of the Paxos phase of lightweight transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialConsistency {
    /// Across all datacenters.
    Serial,
    /// Within the local datacenter (default).
    LocalSerial,
}

impl SerialConsistency {
    /// The driver's value.
    #[must_use]
    pub fn driver(self) -> scylla::statement::SerialConsistency {
        match self {
            Self::Serial => scylla::statement::SerialConsistency::Serial,
            Self::LocalSerial => scylla::statement::SerialConsistency::LocalSerial,
        }
    }

    /// The matching read consistency (reading at SERIAL finishes any in-flight transaction).
    #[must_use]
    pub fn as_read(self) -> scylla::statement::Consistency {
        match self {
            Self::Serial => scylla::statement::Consistency::Serial,
            Self::LocalSerial => scylla::statement::Consistency::LocalSerial,
        }
    }
}

/// Keyspace replication, for `CREATE KEYSPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with a replication factor (single datacenter, development).
    Simple(u32),
    /// `NetworkTopologyStrategy`: replication factor per datacenter (production).
    NetworkTopology(BTreeMap<String, u32>),
}

impl Replication {
    fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "replication '{s}' is not 'SimpleStrategy:<rf>' or 'NetworkTopologyStrategy:<dc>=<rf>[;<dc>=<rf>...]'"
            )
        };
        let (class, rest) = s.split_once(':').ok_or_else(bad)?;
        match class {
            "SimpleStrategy" => {
                let rf: u32 = rest.parse().map_err(|_| bad())?;
                if rf == 0 {
                    return Err(bad());
                }
                Ok(Self::Simple(rf))
            }
            "NetworkTopologyStrategy" => {
                let mut dcs = BTreeMap::new();
                for part in rest.split(';').filter(|p| !p.is_empty()) {
                    let (dc, rf) = part.split_once('=').ok_or_else(bad)?;
                    let rf: u32 = rf.parse().map_err(|_| bad())?;
                    if dc.is_empty()
                        || rf == 0
                        || !dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(bad());
                    }
                    dcs.insert(dc.to_owned(), rf);
                }
                if dcs.is_empty() {
                    return Err(bad());
                }
                Ok(Self::NetworkTopology(dcs))
            }
            _ => Err(bad()),
        }
    }

    /// The CQL map literal.
    #[must_use]
    pub fn cql(&self) -> String {
        match self {
            Self::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Self::NetworkTopology(dcs) => {
                let parts: Vec<String> =
                    dcs.iter().map(|(dc, rf)| format!("'{dc}': {rf}")).collect();
                format!(
                    "{{'class': 'NetworkTopologyStrategy', {}}}",
                    parts.join(", ")
                )
            }
        }
    }
}

/// TLS settings.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// PEM bundle of trusted CAs; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Name checked against the nodes' certificates; `None`: the contact point's host.
    pub server_name: Option<String>,
}

/// Everything the Cassandra run store needs to connect. See the module docs for the URL form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CassandraConfig {
    /// `host:port` of the nodes to contact first (the rest are discovered).
    pub contact_points: Vec<String>,
    /// Keyspace holding Nexus' tables.
    pub keyspace: String,
    /// Local datacenter.
    pub local_datacenter: Option<String>,
    /// User name (password authentication).
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret<String>>,
    /// TLS, when enabled.
    pub tls: Option<Tls>,
    /// Ordinary reads and writes.
    pub consistency: Consistency,
    /// Lightweight transactions.
    pub serial_consistency: SerialConsistency,
    /// For `CREATE KEYSPACE`.
    pub replication: Replication,
    /// How long finished runs are kept.
    pub retention: Duration,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
    /// Connection set-up timeout.
    pub connect_timeout: Duration,
    /// Apply the schema at start-up.
    pub migrate: bool,
}

/// Longest TTL Cassandra accepts (20 years).
const MAX_TTL: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

impl CassandraConfig {
    /// Defaults for `keyspace` on `contact_points`.
    #[must_use]
    pub fn new(contact_points: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            contact_points,
            keyspace: keyspace.into(),
            local_datacenter: None,
            username: None,
            password: None,
            tls: None,
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            replication: Replication::Simple(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }

    /// Parses a `cassandra://` (or `scylla://`) URL; see the module docs.
    ///
    /// # Errors
    /// A message naming the part that is wrong and what is expected.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("cassandra://")
            .or_else(|| url.strip_prefix("scylla://"))
            .ok_or_else(|| {
                format!("store URL '{url}' must start with cassandra:// (or scylla://)")
            })?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, hosts_path) = match main.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, main),
        };
        let (hosts, keyspace) = hosts_path.split_once('/').ok_or_else(|| {
            format!(
                "store URL '{}' names no keyspace: cassandra://host:9042/<keyspace>",
                redact(url)
            )
        })?;
        validate_keyspace(keyspace)?;
        let mut contact_points = Vec::new();
        for h in hosts.split(',') {
            contact_points.push(contact_point(h)?);
        }
        let mut c = Self::new(contact_points, keyspace);
        if let Some(a) = auth {
            let (u, p) = match a.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (a, None),
            };
            if u.is_empty() {
                return Err("store URL has an empty user name before '@'".into());
            }
            c.username = Some(u.to_owned());
            c.password = p.map(|p| Secret::new(p.to_owned()));
        }
        let mut tls = Tls::default();
        let mut tls_on = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("store URL option '{pair}' is not key=value"))?;
            match k {
                "dc" => c.local_datacenter = Some(v.to_owned()).filter(|v| !v.is_empty()),
                "consistency" => c.consistency = Consistency::parse(v)?,
                "serial" => {
                    c.serial_consistency = match v.to_ascii_lowercase().as_str() {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => return Err(format!("serial '{v}' is not serial or local_serial")),
                    }
                }
                "replication" => c.replication = Replication::parse(v)?,
                "retention" => c.retention = duration(k, v)?,
                "timeout" => c.request_timeout = duration(k, v)?,
                "connect_timeout" => c.connect_timeout = duration(k, v)?,
                "migrate" => c.migrate = boolean(k, v)?,
                "tls" => tls_on = boolean(k, v)?,
                "ca" => tls.ca = Some(PathBuf::from(v)),
                "cert" => tls.cert = Some(PathBuf::from(v)),
                "key" => tls.key = Some(PathBuf::from(v)),
                "tls_server_name" => tls.server_name = Some(v.to_owned()),
                other => {
                    return Err(format!(
                        "unknown store URL option '{other}': expected dc, consistency, serial, replication, retention, timeout, connect_timeout, migrate, tls, ca, cert, key, tls_server_name"
                    ));
                }
            }
        }
        let tls_files = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
        if tls_on || tls_files {
            c.tls = Some(tls);
        }
        if let Ok(p) = std::env::var("NEXUS_CASSANDRA_PASSWORD") {
            c.password = Some(Secret::new(p));
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// The first problem found, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.contact_points.is_empty() {
            return Err("no Cassandra contact points".into());
        }
        validate_keyspace(&self.keyspace)?;
        if self.retention < Duration::from_secs(60) || self.retention > MAX_TTL {
            return Err(format!(
                "retention {} must be between 1 minute and 20 years",
                humantime::format_duration(self.retention)
            ));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("timeout and connect_timeout must be positive".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("a Cassandra password is set but no user name".into());
        }
        if let Some(t) = &self.tls
            && t.cert.is_some() != t.key.is_some()
        {
            return Err("mutual TLS needs both cert and key".into());
        }
        if let (Some(dc), Replication::NetworkTopology(dcs)) =
            (&self.local_datacenter, &self.replication)
            && !dcs.contains_key(dc)
        {
            return Err(format!(
                "local datacenter '{dc}' has no replicas in replication {}",
                self.replication.cql()
            ));
        }
        Ok(())
    }

    /// Retention in whole seconds, as a CQL TTL.
    #[must_use]
    pub fn retention_ttl(&self) -> i32 {
        i32::try_from(self.retention.as_secs()).unwrap_or(i32::MAX)
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}<credentials>{}", &url[..s + 3], &url[a..]),
        _ => url.to_owned(),
    }
}

fn validate_keyspace(ks: &str) -> Result<(), String> {
    let ok = !ks.is_empty()
        && ks.len() <= 48
        && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyspace '{ks}' must start with a letter and hold only letters, digits and '_' (at most 48)"
        ))
    }
}

fn contact_point(h: &str) -> Result<String, String> {
    if h.is_empty() {
        return Err("store URL has an empty host".into());
    }
    // [v6]:port, host:port or host
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("host '{h}': unclosed '['"))?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (h.to_owned(), None),
        }
    };
    let port: u16 = match port {
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("host '{h}': port '{p}' is not 1-65535"))?,
        None => 9042,
    };
    Ok(format!("{host}:{port}"))
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|e| format!("{key} '{v}' is not a duration like 30s, 5m or 7d: {e}"))
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{key} '{v}' is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_url() {
        let c = CassandraConfig::from_url("cassandra://127.0.0.1/nexus").unwrap();
        assert_eq!(c.contact_points, vec!["127.0.0.1:9042"]);
        assert_eq!(c.keyspace, "nexus");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        assert_eq!(c.serial_consistency, SerialConsistency::LocalSerial);
        assert_eq!(c.replication, Replication::Simple(1));
        assert!(c.migrate);
        assert!(c.tls.is_none());
    }

    #[test]
    fn full_url() {
        let c = CassandraConfig::from_url(
            "scylla://app:s3cret@h1:9142,[::1]:9043,h3/runs_prod?dc=eu1&consistency=QUORUM&serial=serial\
             &replication=NetworkTopologyStrategy:eu1=3;us1=2&retention=30d&timeout=2s&migrate=false\
             &tls=true&ca=/etc/ca.pem&tls_server_name=db.internal",
        )
        .unwrap();
        assert_eq!(c.contact_points, vec!["h1:9142", "[::1]:9043", "h3:9042"]);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(
            c.password.as_ref().map(|p| p.expose().as_str()),
            Some("s3cret")
        );
        assert_eq!(c.local_datacenter.as_deref(), Some("eu1"));
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.serial_consistency, SerialConsistency::Serial);
        assert_eq!(
            c.replication.cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu1': 3, 'us1': 2}"
        );
        assert_eq!(c.retention_ttl(), 30 * 24 * 3600);
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert!(!c.migrate);
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("db.internal"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "password leaked into Debug"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("postgres://x/y", "must start with cassandra://"),
            ("cassandra://host", "names no keyspace"),
            ("cassandra://u:p@host", "names no keyspace"),
            ("cassandra://host/9bad", "must start with a letter"),
            ("cassandra://host/with-dash", "must start with a letter"),
            ("cassandra://host:0/ks", "port '0'"),
            ("cassandra://host:x/ks", "port 'x'"),
            ("cassandra:///ks", "empty host"),
            ("cassandra://h/ks?consistency=most", "not one of"),
            (
                "cassandra://h/ks?replication=Simple:3",
                "SimpleStrategy:<rf>",
            ),
            (
                "cassandra://h/ks?replication=SimpleStrategy:0",
                "SimpleStrategy:<rf>",
            ),
            (
                "cassandra://h/ks?replication=NetworkTopologyStrategy:",
                "NetworkTopologyStrategy",
            ),
            ("cassandra://h/ks?retention=forever", "not a duration"),
            ("cassandra://h/ks?retention=10s", "between 1 minute"),
            (
                "cassandra://h/ks?colour=blue",
                "unknown store URL option 'colour'",
            ),
            ("cassandra://h/ks?tls", "not key=value"),
            ("cassandra://h/ks?cert=/c.pem", "both cert and key"),
            (
                "cassandra://h/ks?dc=x&replication=NetworkTopologyStrategy:y=1",
                "no replicas",
            ),
            ("cassandra://:pw@h/ks", "empty user name"),
        ] {
            let e = CassandraConfig::from_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains(":pw@"), "{url}: credentials echoed: {e}");
        }
    }

    #[test]
    fn replication_literals() {
        assert_eq!(
            Replication::Simple(3).cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
    }
}
