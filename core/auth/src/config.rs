//! The `auth` section of a scheduler's (and standalone's) configuration, with its checks.
//!
//! ```yaml
//! auth:
//!   mode: required            # or `none` (must be written; see `AuthMode`)
//!   oidc:
//!     issuer: https://dex.example.com/dex
//!     audiences: [nexus]
//!     claims: { subject: email, groups: groups }
//!   api_keys:
//!     files: [/etc/nexus/api-keys/keys.yaml]
//!   rules:
//!     - groups: [team-a]
//!       actions: [submit, read, cancel]
//!       algorithms: [knapsack]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Rule;

/// Whether the API asks callers who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every caller may do everything (as the Go Nexus, which expects a
    /// gateway in front). Must be written explicitly to listen beyond loopback.
    None,
    /// Every API call needs a credential: an OIDC token, an API key, or a run token.
    Required,
}

/// Section `auth`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` or `required`. Unset: `required` when `oidc` or `api_keys` is configured; otherwise
    /// no authentication, which the process accepts only when it listens on loopback.
    pub mode: Option<AuthMode>,
    /// OIDC bearer tokens (ID or access tokens of an identity provider).
    pub oidc: Option<OidcConfig>,
    /// Static API keys for service accounts (stored as SHA-256 hashes).
    pub api_keys: ApiKeysConfig,
    /// What each subject or group may do. Nothing is allowed that no rule grants.
    pub rules: Vec<Rule>,
}

/// Section `auth.oidc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL, exactly as in the tokens' `iss` (discovery reads
    /// `<issuer>/.well-known/openid-configuration`). `https://`, or `http://` on loopback.
    pub issuer: String,
    /// Accepted `aud` values (the client id the tokens are minted for); at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// How often the issuer's keys are fetched again (a token signed by an unknown key id also
    /// triggers a fetch, at most every `min_refresh_interval`).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Fewest time between two fetches of the keys caused by unknown key ids.
    #[serde(with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// PEM CA certificates trusted for the issuer's TLS besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Which claims name the caller and its groups.
    pub claims: ClaimMapping,
    /// Verified tokens remembered (until they expire), so a client's repeated calls cost one
    /// signature check.
    pub cache_size: usize,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audiences: Vec::new(),
            algorithms: [
                "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
            ]
            .map(String::from)
            .to_vec(),
            jwks_refresh: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(5),
            clock_skew: Duration::from_secs(60),
            ca_file: None,
            claims: ClaimMapping::default(),
            cache_size: 10_000,
        }
    }
}

/// Section `auth.oidc.claims`: the claim mapping. A name with dots is a path into nested
/// objects (Keycloak's `realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The claim naming the caller (`sub`, `email`, `preferred_username`, Entra's `oid`…).
    pub subject: String,
    /// The claim listing the caller's groups (a string array or one string); absent = none.
    pub groups: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            groups: "groups".into(),
        }
    }
}

/// Section `auth.api_keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// Keys written in the configuration (hashes only).
    pub keys: Vec<ApiKeyEntry>,
    /// YAML files holding a list of keys, as `keys` (e.g. a mounted Kubernetes Secret).
    pub files: Vec<PathBuf>,
}

impl ApiKeysConfig {
    /// True when any key source is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty() || !self.files.is_empty()
    }
}

/// One API key: who it is, and the SHA-256 of the key (`nexus api-key new` prints both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The subject the key authenticates as (rules name it in `subjects`).
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    /// Groups of the key (rules name them in `groups`).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl AuthConfig {
    /// The effective mode: the written one, else `required` when a credential source is
    /// configured, else `None` (unset and nothing configured).
    #[must_use]
    pub fn effective_mode(&self) -> Option<AuthMode> {
        self.mode.or_else(|| {
            (self.oidc.is_some() || self.api_keys.is_configured()).then_some(AuthMode::Required)
        })
    }

    /// Checks every value; messages name the key (under `auth.`) and what would be valid. The
    /// API key files are read by [`crate::Authenticator::start`], not here.
    ///
    /// # Errors
    /// Every problem, joined by "; ".
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        let mode = self.effective_mode();
        if mode == Some(AuthMode::None) && (self.oidc.is_some() || self.api_keys.is_configured()) {
            e.push(
                "auth.mode: 'none' turns authentication off, but auth.oidc or auth.api_keys is set; \
                 remove them or set mode: required"
                    .to_owned(),
            );
        }
        if mode == Some(AuthMode::Required) {
            if self.oidc.is_none() && !self.api_keys.is_configured() {
                e.push(
                    "auth.mode: 'required' needs a way for clients to authenticate: configure \
                     auth.oidc or auth.api_keys (run tokens only authenticate algorithms)"
                        .to_owned(),
                );
            }
            if self.rules.is_empty() {
                e.push(
                    "auth.rules: empty, so every authenticated client would be refused; add a rule \
                     such as {groups: [my-team], actions: [submit, read, cancel], algorithms: [\"*\"]}"
                        .to_owned(),
                );
            }
        }
        if let Some(o) = &self.oidc {
            o.validate(&mut e);
        }
        for (i, k) in self.api_keys.keys.iter().enumerate() {
            if let Err(m) = k.validate() {
                e.push(format!("auth.api_keys.keys[{i}]: {m}"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Err(m) = r.validate() {
                e.push(format!("auth.rules[{i}]: {m}"));
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// True for a URL whose host is a loopback address or `localhost`.
#[must_use]
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or("");
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl OidcConfig {
    fn validate(&self, e: &mut Vec<String>) {
        let issuer = &self.issuer;
        if issuer.is_empty() {
            e.push(
                "auth.oidc.issuer: required (the identity provider's issuer URL, as in the tokens' `iss`)"
                    .to_owned(),
            );
        } else if !(issuer.starts_with("https://")
            || (issuer.starts_with("http://") && is_loopback_url(issuer)))
        {
            e.push(format!(
                "auth.oidc.issuer: '{issuer}' must be an https:// URL (http:// only on loopback)"
            ));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            e.push(
                "auth.oidc.audiences: give at least one non-empty audience (the client id the tokens are issued for)"
                    .to_owned(),
            );
        }
        if self.algorithms.is_empty() {
            e.push("auth.oidc.algorithms: give at least one algorithm".to_owned());
        }
        for a in &self.algorithms {
            match a.parse::<jsonwebtoken::Algorithm>() {
                Ok(
                    jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512,
                ) => e.push(format!(
                    "auth.oidc.algorithms: '{a}' is symmetric (a shared secret); only RS*, PS*, ES* and EdDSA are accepted"
                )),
                Ok(_) => {}
                Err(_) => e.push(format!(
                    "auth.oidc.algorithms: '{a}' is not a JWS algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )),
            }
        }
        if self.jwks_refresh < Duration::from_secs(10)
            || self.jwks_refresh > Duration::from_secs(86_400)
        {
            e.push("auth.oidc.jwks_refresh: must be between 10s and 24h".to_owned());
        }
        if self.min_refresh_interval > self.jwks_refresh {
            e.push("auth.oidc.min_refresh_interval: must not exceed jwks_refresh".to_owned());
        }
        if self.clock_skew > Duration::from_secs(600) {
            e.push("auth.oidc.clock_skew: must be at most 10m".to_owned());
        }
        if self.claims.subject.is_empty() {
            e.push("auth.oidc.claims.subject: required (e.g. sub or email)".to_owned());
        }
        if !(1..=1_000_000).contains(&self.cache_size) {
            e.push("auth.oidc.cache_size: must be between 1 and 1000000".to_owned());
        }
    }
}

impl ApiKeyEntry {
    /// Checks the entry.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: required (the subject rules name)".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sha256 of '{}': must be the 64 hex digits of the key's SHA-256 (`nexus api-key hash` prints it), never the key itself",
                self.name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:5556/dex"));
        assert!(is_loopback_url("http://localhost/x"));
        assert!(is_loopback_url("http://[::1]:80/"));
        assert!(!is_loopback_url("http://10.0.0.1/"));
        assert!(!is_loopback_url("http://dex.example.com/"));
    }

    #[test]
    fn mistakes_are_named() {
        let c: AuthConfig = serde_yaml::from_str(
            "mode: required\noidc: {issuer: 'http://dex.example.com', audiences: [], algorithms: [HS256, XX]}\napi_keys: {keys: [{name: ci, sha256: secret}]}\nrules: [{actions: [read]}]",
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        for want in [
            "auth.oidc.issuer: 'http://dex.example.com' must be an https:// URL",
            "auth.oidc.audiences",
            "'HS256' is symmetric",
            "'XX' is not a JWS algorithm",
            "auth.api_keys.keys[0]: sha256 of 'ci'",
            "auth.rules[0]:",
        ] {
            assert!(e.contains(want), "{want} missing in {e}");
        }
        let none: AuthConfig = serde_yaml::from_str("mode: none\napi_keys: {files: [/x]}").unwrap();
        assert!(none.validate().unwrap_err().contains("auth.mode: 'none'"));
        let empty: AuthConfig = serde_yaml::from_str("mode: required").unwrap();
        let e = empty.validate().unwrap_err();
        assert!(e.contains("configure auth.oidc or auth.api_keys"), "{e}");
        assert!(e.contains("auth.rules: empty"), "{e}");
        assert!(serde_yaml::from_str::<AuthConfig>("mode: maybe").is_err());
        assert!(serde_yaml::from_str::<AuthConfig>("oidc: {isuer: x}").is_err());
    }

    #[test]
    fn mode_follows_what_is_configured() {
        assert_eq!(AuthConfig::default().effective_mode(), None);
        let keys = AuthConfig {
            api_keys: ApiKeysConfig {
                files: vec!["/k".into()],
                keys: vec![],
            },
            ..AuthConfig::default()
        };
        assert_eq!(keys.effective_mode(), Some(AuthMode::Required));
    }
}
