//! Configuration of the S3 payload store, from an `s3://` URL.
//!
//! ```text
//! s3://bucket[/prefix][?option=value&...]      (s3a://, the reference's form, is accepted too)
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `region` | `us-east-1` with an `endpoint`, else the AWS chain (`AWS_REGION`, profile, IMDS) | region the requests are signed for |
//! | `endpoint` | AWS S3 | `http(s)://host[:port]` of an S3-compatible server (SeaweedFS, MinIO, Ceph, ...) |
//! | `path_style` | `true` with an `endpoint`, else `false` | `endpoint/bucket/key` instead of `bucket.endpoint/key` |
//! | `access_key`, `secret_key` | none: the AWS default chain | static credentials |
//! | `multipart_threshold` | `16MiB` | bigger objects are sent as multipart uploads (5 MiB to 5 GiB) |
//! | `part_size` | `8MiB` | size of one part of a multipart upload (5 MiB to 5 GiB) |
//! | `timeout` | `30s` | time limit of one attempt of one request |
//! | `connect_timeout` | `5s` | time limit to open a connection |
//! | `max_attempts` | `5` | attempts per request, retries included (1 disables retries) |
//! | `retry_backoff` | `1s` | initial retry back-off (doubled per attempt, jittered, at most 20 s) |
//!
//! Values are percent-decoded (`%2F` is `/`; `+` stays `+`, as in AWS secret keys). Sizes are
//! bytes or a number with `KiB`/`MiB`/`GiB` (also `K`/`M`/`G`, the same) or `KB`/`MB`/`GB`
//! (powers of ten). Durations are human durations (`30s`, `2m`).
//!
//! Credentials: `NEXUS_S3_ACCESS_KEY_ID` and `NEXUS_S3_SECRET_ACCESS_KEY` override the URL's
//! (preferred: a URL ends up in shell histories and process listings). Without static
//! credentials the AWS default chain is used: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`), the shared profile (`AWS_PROFILE`, static keys or `role_arn`), web
//! identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: EKS IRSA), ECS container
//! credentials and EC2 instance metadata (IMDS). SSO profiles and `credential_process` are not
//! compiled in. The secret key never appears in `Debug` output or error messages.

use nexus_model::secret::Secret;
use std::time::Duration;

use crate::fs::validate_key;

/// Smallest part S3 accepts in a multipart upload (all parts but the last): 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Largest object a single `PutObject` (and largest part an `UploadPart`) may carry: 5 GiB.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * MIB;
/// Most parts a multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// Default multipart threshold: 16 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * MIB;
/// Default part size: 8 MiB.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// Region used with a custom endpoint when none is given: S3-compatible servers mostly ignore
/// it, but SigV4 signs for one.
pub const DEFAULT_ENDPOINT_REGION: &str = "us-east-1";
/// Environment variable overriding the access key of the URL.
pub const ACCESS_KEY_ENV: &str = "NEXUS_S3_ACCESS_KEY_ID";
/// Environment variable overriding the secret key of the URL.
pub const SECRET_KEY_ENV: &str = "NEXUS_S3_SECRET_ACCESS_KEY";

const MIB: u64 = 1024 * 1024;

/// Everything the S3 payload store needs. See the module docs for the URL form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket holding the objects.
    pub bucket: String,
    /// Key prefix of every object (no leading or trailing `/`; empty: none).
    pub prefix: String,
    /// Signing region; `None`: the AWS region chain.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server; `None`: AWS S3.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`).
    pub path_style: bool,
    /// Static access key id; `None`: the AWS default credential chain.
    pub access_key: Option<String>,
    /// Static secret key.
    pub secret_key: Option<Secret<String>>,
    /// Objects larger than this are sent as multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (grown when an object would need more than 10 000 parts).
    pub part_size: u64,
    /// Time limit of one attempt of one request.
    pub timeout: Duration,
    /// Time limit to open a connection.
    pub connect_timeout: Duration,
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Initial back-off between attempts.
    pub retry_backoff: Duration,
}

impl S3Config {
    /// Defaults for `bucket` on AWS S3, credentials and region from the AWS chains.
    #[must_use]
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            path_style: false,
            access_key: None,
            secret_key: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
        }
    }

    /// Parses an `s3://` (or `s3a://`) URL, with credentials from `NEXUS_S3_ACCESS_KEY_ID` /
    /// `NEXUS_S3_SECRET_ACCESS_KEY` when set; see the module docs.
    ///
    /// # Errors
    /// A message naming the part that is wrong and what is expected.
    pub fn from_url(url: &str) -> Result<Self, String> {
        Self::from_url_with_env(url, |name| std::env::var(name).ok())
    }

    /// As [`S3Config::from_url`], reading the environment through `env` (tests pass their own).
    ///
    /// # Errors
    /// A message naming the part that is wrong and what is expected.
    pub fn from_url_with_env(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let shown = redact(url);
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
            .ok_or_else(|| {
                format!("payload store URL '{shown}' must start with s3:// (or s3a://)")
            })?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = main.split_once('/').unwrap_or((main, ""));
        if bucket.contains('@') {
            return Err(format!(
                "payload store URL '{shown}' has credentials before the bucket: pass access_key \
                 and secret_key as options, or set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
            ));
        }
        let mut c = Self::new(bucket);
        c.prefix = prefix.trim_end_matches('/').to_owned();
        let mut path_style = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                let k = pair.split('=').next().unwrap_or(pair);
                format!("payload store URL option '{k}' is not key=value")
            })?;
            let v = percent_decode(k, v)?;
            match k {
                "region" => c.region = Some(v),
                "endpoint" => c.endpoint = Some(v.trim_end_matches('/').to_owned()),
                "path_style" => path_style = Some(boolean(k, &v)?),
                "access_key" => c.access_key = Some(v),
                "secret_key" => c.secret_key = Some(Secret::new(v)),
                "multipart_threshold" => c.multipart_threshold = size(k, &v)?,
                "part_size" => c.part_size = size(k, &v)?,
                "timeout" => c.timeout = duration(k, &v)?,
                "connect_timeout" => c.connect_timeout = duration(k, &v)?,
                "max_attempts" => {
                    c.max_attempts = v
                        .parse()
                        .map_err(|_| format!("max_attempts '{v}' is not a whole number"))?;
                }
                "retry_backoff" => c.retry_backoff = duration(k, &v)?,
                other => {
                    return Err(format!(
                        "unknown payload store URL option '{other}': expected region, endpoint, \
                         path_style, access_key, secret_key, multipart_threshold, part_size, \
                         timeout, connect_timeout, max_attempts, retry_backoff"
                    ));
                }
            }
        }
        c.path_style = path_style.unwrap_or(c.endpoint.is_some());
        if c.endpoint.is_some() && c.region.is_none() {
            c.region = Some(DEFAULT_ENDPOINT_REGION.to_owned());
        }
        if let Some(a) = env(ACCESS_KEY_ENV).filter(|v| !v.is_empty()) {
            c.access_key = Some(a);
        }
        if let Some(s) = env(SECRET_KEY_ENV).filter(|v| !v.is_empty()) {
            c.secret_key = Some(Secret::new(s));
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// The first problem found, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        validate_bucket(&self.bucket)?;
        if !self.prefix.is_empty() {
            validate_key(&self.prefix).map_err(|e| {
                format!(
                    "prefix '{}' is not a valid key prefix: {}",
                    self.prefix, e.message
                )
            })?;
        }
        if let Some(r) = &self.region {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "region '{r}' must be letters, digits, '-' and '_' (e.g. eu-west-1)"
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            validate_endpoint(e)?;
        }
        match (&self.access_key, &self.secret_key) {
            (Some(a), Some(_)) if a.is_empty() => {
                return Err("access_key is empty".into());
            }
            (Some(_), Some(s)) if s.expose().is_empty() => {
                return Err("secret_key is empty".into());
            }
            (Some(_), None) => {
                return Err(format!(
                    "access_key is set but no secret_key (option secret_key or {SECRET_KEY_ENV})"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "secret_key is set but no access_key (option access_key or {ACCESS_KEY_ENV})"
                ));
            }
            _ => {}
        }
        for (name, v) in [
            ("multipart_threshold", self.multipart_threshold),
            ("part_size", self.part_size),
        ] {
            if !(MIN_PART_SIZE..=MAX_SINGLE_PUT).contains(&v) {
                return Err(format!(
                    "{name} {v} bytes must be between 5MiB ({MIN_PART_SIZE}) and 5GiB \
                     ({MAX_SINGLE_PUT}), S3's limits"
                ));
            }
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("timeout and connect_timeout must be positive".into());
        }
        if !(1..=20).contains(&self.max_attempts) {
            return Err(format!(
                "max_attempts {} must be between 1 (no retries) and 20",
                self.max_attempts
            ));
        }
        if self.retry_backoff.is_zero() || self.retry_backoff > Duration::from_secs(20) {
            return Err(format!(
                "retry_backoff {} must be positive and at most 20s",
                humantime::format_duration(self.retry_backoff)
            ));
        }
        Ok(())
    }
}

/// The URL with the value of `secret_key` (and any `user:password@`) hidden, for error messages.
fn redact(url: &str) -> String {
    let (main, query) = url.split_once('?').unwrap_or((url, ""));
    let main = match (main.find("://"), main.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}<credentials>{}", &main[..s + 3], &main[a..]),
        _ => main.to_owned(),
    };
    if query.is_empty() {
        return main;
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("secret_key", _)) => "secret_key=<redacted>".to_owned(),
            _ => p.to_owned(),
        })
        .collect();
    format!("{main}?{}", pairs.join("&"))
}

/// S3's bucket naming rules (the strict, DNS-compatible ones every S3-compatible store accepts).
fn validate_bucket(b: &str) -> Result<(), String> {
    let bytes = b.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && bytes
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && bytes
            .first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && bytes
            .last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !b.contains("..");
    if ok {
        Ok(())
    } else if b.is_empty() {
        Err("payload store URL names no bucket: s3://<bucket>[/prefix]".into())
    } else {
        Err(format!(
            "bucket '{b}' must be 3 to 63 lowercase letters, digits, '.' and '-', starting and \
             ending with a letter or digit"
        ))
    }
}

fn validate_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "endpoint '{e}' must start with http:// or https:// (e.g. http://127.0.0.1:8333)"
            )
        })?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', '@', ' ']) {
        return Err(format!(
            "endpoint '{e}' must be http(s)://host[:port][/path], without query or credentials"
        ));
    }
    Ok(())
}

/// Decodes `%XX` escapes; `+` is kept (AWS secret keys contain it).
fn percent_decode(key: &str, v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("option {key} has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("option {key} is not UTF-8 once %-decoded"))
}

/// Parses a size: bytes, or a number with a unit (see the module docs).
fn size(key: &str, v: &str) -> Result<u64, String> {
    let bad = || format!("{key} '{v}' is not a size like 8MiB, 16MiB or 5242880 (bytes)");
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1024,
        "m" | "mib" => MIB,
        "g" | "gib" => 1024 * MIB,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|e| format!("{key} '{v}' is not a duration like 30s, 2m or 1h: {e}"))
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

    fn parse(url: &str) -> Result<S3Config, String> {
        S3Config::from_url_with_env(url, |_| None)
    }

    #[test]
    fn minimal_url_is_aws_with_the_default_chains() {
        let c = parse("s3://nexus-payloads").unwrap();
        assert_eq!(c.bucket, "nexus-payloads");
        assert_eq!(c.prefix, "");
        assert_eq!(c.region, None);
        assert_eq!(c.endpoint, None);
        assert!(!c.path_style);
        assert_eq!(c.access_key, None);
        assert_eq!(c.multipart_threshold, 16 * MIB);
        assert_eq!(c.part_size, 8 * MIB);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(parse("s3://nexus-payloads/").unwrap(), c);
    }

    #[test]
    fn reference_s3a_form_and_prefix() {
        let c = parse("s3a://bucket/nexus/payloads/").unwrap();
        assert_eq!(c.bucket, "bucket");
        assert_eq!(c.prefix, "nexus/payloads");
    }

    #[test]
    fn full_url() {
        let c = parse(
            "s3://my.bucket-1/pre?region=eu-central-1&endpoint=http://127.0.0.1:8333/\
             &access_key=AKID&secret_key=abc%2Fdef+ghi&multipart_threshold=32MiB&part_size=6MB\
             &timeout=10s&connect_timeout=1s&max_attempts=3&retry_backoff=100ms",
        )
        .unwrap();
        assert_eq!(c.bucket, "my.bucket-1");
        assert_eq!(c.prefix, "pre");
        assert_eq!(c.region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(c.path_style, "an endpoint means path style by default");
        assert_eq!(c.access_key.as_deref(), Some("AKID"));
        assert_eq!(
            c.secret_key.as_ref().map(|s| s.expose().as_str()),
            Some("abc/def+ghi")
        );
        assert_eq!(c.multipart_threshold, 32 * MIB);
        assert_eq!(c.part_size, 6_000_000);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.retry_backoff, Duration::from_millis(100));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("def+ghi"),
            "secret leaked into Debug: {debug}"
        );
        assert!(debug.contains("AKID"), "{debug}");
    }

    #[test]
    fn endpoint_defaults_region_and_path_style_can_be_turned_off() {
        let c = parse("s3://b-1?endpoint=https://s3.example.com&path_style=false").unwrap();
        assert_eq!(c.region.as_deref(), Some(DEFAULT_ENDPOINT_REGION));
        assert!(!c.path_style);
        let c = parse("s3://b-1?path_style=true").unwrap();
        assert!(c.path_style);
        assert_eq!(c.region, None);
    }

    #[test]
    fn environment_credentials_override_the_url() {
        let env = |name: &str| match name {
            ACCESS_KEY_ENV => Some("ENVKEY".to_owned()),
            SECRET_KEY_ENV => Some("envsecret".to_owned()),
            _ => None,
        };
        let c = S3Config::from_url_with_env("s3://b-1?access_key=u&secret_key=s", env).unwrap();
        assert_eq!(c.access_key.as_deref(), Some("ENVKEY"));
        assert_eq!(
            c.secret_key.as_ref().map(|s| s.expose().as_str()),
            Some("envsecret")
        );
        let c = S3Config::from_url_with_env("s3://b-1", env).unwrap();
        assert_eq!(c.access_key.as_deref(), Some("ENVKEY"));
        // Half a pair from the environment is an error, not a silent fallback to the chain.
        let half = |name: &str| (name == SECRET_KEY_ENV).then(|| "s".to_owned());
        let e = S3Config::from_url_with_env("s3://b-1", half).unwrap_err();
        assert!(e.contains("secret_key is set but no access_key"), "{e}");
    }

    #[test]
    fn sizes() {
        for (v, want) in [
            ("5242880", 5 * MIB),
            ("5MiB", 5 * MIB),
            ("5 MiB", 5 * MIB),
            ("5m", 5 * MIB),
            ("1GiB", 1024 * MIB),
            ("8MB", 8_000_000),
            ("6000KB", 6_000_000),
            ("6000k", 6000 * 1024),
        ] {
            assert_eq!(size("part_size", v).unwrap(), want, "{v}");
        }
        for v in [
            "",
            "MiB",
            "5 TiB",
            "-5MiB",
            "5.5MiB",
            "99999999999999999999G",
        ] {
            assert!(size("part_size", v).is_err(), "{v}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("https://bucket/x", "must start with s3://"),
            ("s3://", "names no bucket"),
            ("s3:///prefix", "names no bucket"),
            ("s3://ab", "3 to 63"),
            ("s3://Bucket", "lowercase"),
            ("s3://-bucket", "starting and"),
            ("s3://bu..cket", "3 to 63"),
            ("s3://key:secret@bucket", "credentials before the bucket"),
            ("s3://bucket/a//b", "prefix 'a//b'"),
            ("s3://bucket/../etc", "prefix '../etc'"),
            ("s3://bucket/a b", "prefix 'a b'"),
            (
                "s3://bucket?colour=blue",
                "unknown payload store URL option 'colour'",
            ),
            ("s3://bucket?region", "option 'region' is not key=value"),
            ("s3://bucket?region=eu west", "region 'eu west'"),
            (
                "s3://bucket?endpoint=127.0.0.1:8333",
                "must start with http://",
            ),
            ("s3://bucket?endpoint=http:///x", "http(s)://host"),
            (
                "s3://bucket?endpoint=http://h?x",
                "without query or credentials",
            ),
            (
                "s3://bucket?endpoint=http://u:p%40h",
                "without query or credentials",
            ),
            (
                "s3://bucket?path_style=maybe",
                "path_style 'maybe' is not true or false",
            ),
            ("s3://bucket?access_key=a", "no secret_key"),
            ("s3://bucket?secret_key=hunter2", "no access_key"),
            (
                "s3://bucket?access_key=&secret_key=x",
                "access_key is empty",
            ),
            (
                "s3://bucket?part_size=4MiB",
                "part_size 4194304 bytes must be between 5MiB",
            ),
            ("s3://bucket?part_size=6GiB", "part_size"),
            ("s3://bucket?part_size=lots", "not a size"),
            (
                "s3://bucket?multipart_threshold=1MiB",
                "multipart_threshold 1048576",
            ),
            ("s3://bucket?timeout=soon", "not a duration"),
            ("s3://bucket?timeout=0s", "must be positive"),
            (
                "s3://bucket?max_attempts=0",
                "between 1 (no retries) and 20",
            ),
            ("s3://bucket?max_attempts=x", "not a whole number"),
            ("s3://bucket?retry_backoff=1m", "at most 20s"),
            ("s3://bucket?secret_key=%zz", "bad %-escape"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: secret echoed: {e}");
        }
        for url in ["http://b?secret_key=hunter2", "https://k:hunter2@b/x"] {
            let e = parse(url).unwrap_err();
            assert!(!e.contains("hunter2"), "secret echoed: {e}");
        }
    }
}
