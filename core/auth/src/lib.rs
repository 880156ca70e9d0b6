//! nexus-auth: who calls the public API, and what they may do.
//!
//! * [`Authenticator`] turns a bearer credential into a [`Principal`]: a configured API key
//!   ([`apikey`]) or an OIDC token ([`oidc`]), tried in that order (a chain, as Kubernetes'
//!   authenticators). Run tokens (algorithms acting as their run) are verified by the scheduler
//!   with the signing key it already holds; this crate knows nothing of runs or stores.
//! * [`policy::Policy`] decides whether a principal may submit, read or cancel runs of an
//!   algorithm or workgroup ([`config::AuthConfig::rules`]).
//! * [`audit`] writes the one log line per write; [`metrics`] counts outcomes.
//!
//! Framework-neutral: the scheduler adapts it to HTTP (401/403 `text/plain`) and gRPC
//! (`UNAUTHENTICATED` / `PERMISSION_DENIED`). What it must not do: log a credential, or answer
//! "allowed" for anything no rule grants.

pub mod apikey;
pub mod config;
pub mod metrics;
pub mod oidc;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

pub use config::{AuthConfig, AuthMode};
use nexus_http::tls::TlsError;
pub use policy::{Action, Policy, Rule};
use tokio_util::sync::CancellationToken;

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// An OIDC bearer token.
    Oidc,
    /// A static API key.
    ApiKey,
}

impl Method {
    /// The metric / log name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oidc => "oidc",
            Self::ApiKey => "api_key",
        }
    }
}

/// An authenticated caller that is not a run: a person or a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name (mapped subject claim, or API key name).
    pub subject: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// How it authenticated.
    pub method: Method,
}

impl Principal {
    /// `'alice@example.com' (groups: team-a)` — for messages and audit lines.
    #[must_use]
    pub fn describe(&self) -> String {
        let kind = match self.method {
            Method::Oidc => "user",
            Method::ApiKey => "API key",
        };
        if self.groups.is_empty() {
            format!("{kind} '{}' (no groups)", self.subject)
        } else {
            format!(
                "{kind} '{}' (groups: {})",
                self.subject,
                self.groups.join(", ")
            )
        }
    }
}

/// Why a caller is not authenticated (401), or cannot be yet (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error("{0}")]
    Missing(String),
    /// A credential that does not verify; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The identity provider's keys are not loaded yet.
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// The metric label.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::Invalid(_) => "invalid",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// API key files.
    #[error(transparent)]
    Keys(#[from] apikey::KeyFileError),
    /// The OIDC CA file.
    #[error("auth.oidc.ca_file: {0}")]
    Tls(#[from] TlsError),
}

/// The authenticator chain and the rules of one scheduler.
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: AuthMode,
    keys: apikey::ApiKeys,
    oidc: Option<Arc<oidc::Oidc>>,
    policy: Arc<Policy>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::none()
    }
}

impl Authenticator {
    /// No authentication (`auth.mode: none`): every caller may do everything.
    #[must_use]
    pub fn none() -> Self {
        Self {
            mode: AuthMode::None,
            keys: apikey::ApiKeys::empty(),
            oidc: None,
            policy: Arc::new(Policy::default()),
        }
    }

    /// Builds the chain of `config` (validated here too), loads the API keys and starts the
    /// background work until `stop`: the OIDC key fetcher and the key-file watcher.
    ///
    /// # Errors
    /// Invalid configuration, unreadable key files, unusable CA file.
    pub fn start(config: &AuthConfig, stop: &CancellationToken) -> Result<Self, SetupError> {
        config.validate().map_err(SetupError::Config)?;
        // Described in every mode: run tokens are counted without authentication too.
        metrics::describe();
        let mode = config.effective_mode().unwrap_or(AuthMode::None);
        if mode == AuthMode::None {
            return Ok(Self::none());
        }
        let keys = apikey::ApiKeys::load(&config.api_keys)?;
        tokio::spawn(keys.clone().watch(Duration::from_secs(10), stop.clone()));
        let oidc = match &config.oidc {
            Some(c) => {
                let o = oidc::Oidc::new(c.clone())?;
                tokio::spawn(o.clone().run(stop.clone()));
                Some(o)
            }
            None => None,
        };
        Ok(Self {
            mode,
            keys,
            oidc,
            policy: Arc::new(Policy::new(config.rules.clone())),
        })
    }

    /// A chain of fixed parts (tests; no background work).
    #[must_use]
    pub fn from_parts(
        keys: apikey::ApiKeys,
        oidc: Option<Arc<oidc::Oidc>>,
        rules: Vec<Rule>,
    ) -> Self {
        Self {
            mode: AuthMode::Required,
            keys,
            oidc,
            policy: Arc::new(Policy::new(rules)),
        }
    }

    /// True unless the mode is `none`.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.mode == AuthMode::Required
    }

    /// The rules.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What a caller without credentials is told to send.
    #[must_use]
    pub fn missing_hint(&self) -> String {
        let mut ways = Vec::new();
        if let Some(o) = &self.oidc {
            ways.push(format!("an OIDC token from {}", o.issuer()));
        }
        if self.keys.is_configured() {
            ways.push("an API key".to_owned());
        }
        ways.push("(algorithms) the run token with x-nexus-run-id".to_owned());
        format!(
            "authentication required: send `Authorization: Bearer <token>` with {} (CLI: --token or NEXUS_TOKEN)",
            ways.join(", or ")
        )
    }

    /// Authenticates a bearer credential: an API key, else an OIDC token.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] naming what is wrong; [`AuthError::Unavailable`] while the OIDC
    /// keys were never loaded.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing(self.missing_hint()));
        }
        if let Some(p) = self.keys.lookup(bearer) {
            return Ok(p);
        }
        match &self.oidc {
            Some(o) => o.verify(bearer).await,
            None if bearer.starts_with(apikey::KEY_PREFIX) => Err(AuthError::Invalid(
                "the API key is not configured here (revoked, or a key of another installation)"
                    .into(),
            )),
            None => Err(AuthError::Invalid(
                "the bearer token is not a configured API key (this scheduler accepts no OIDC tokens: auth.oidc is not set)"
                    .into(),
            )),
        }
    }
}

/// The `Authorization` header's bearer credential: `Some(token)` for `Bearer <token>` (scheme
/// case-insensitive), `Err` for another scheme.
///
/// # Errors
/// The header is not a bearer credential.
pub fn bearer(header: &str) -> Result<&str, AuthError> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
        Ok(rest.trim())
    } else {
        Err(AuthError::Invalid(format!(
            "the Authorization header must be `Bearer <token>`, got scheme '{}'",
            scheme.chars().take(20).collect::<String>()
        )))
    }
}

/// Audit lines: one per write (submit, cancel, tag), target `nexus::audit`.
pub mod audit {
    /// Writes the audit line of one write: who (`caller`), what (`action`), on which
    /// algorithm and run, and the outcome (`ok`, `denied`, `failed`).
    pub fn write(caller: &str, action: &str, algorithm: &str, run: &str, outcome: &str) {
        tracing::info!(
            target: "nexus::audit",
            who = caller,
            action,
            algorithm,
            run,
            outcome,
            "audit"
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::oidc::tests::{TestKey, claims, config};

    #[tokio::test]
    async fn the_chain_tries_api_keys_then_oidc() {
        let key = apikey::generate();
        let keys = apikey::ApiKeys::load(&config::ApiKeysConfig {
            keys: vec![config::ApiKeyEntry {
                name: "ci".into(),
                sha256: apikey::hash(&key),
                groups: vec!["team-b".into()],
            }],
            files: vec![],
        })
        .unwrap();
        let jwt = TestKey::new("k1");
        let oidc = oidc::Oidc::with_jwks(config(), &json!({"keys": [jwt.jwk]})).unwrap();
        let auth = Authenticator::from_parts(keys, Some(oidc), vec![]);
        assert_eq!(
            auth.authenticate(&key).await.unwrap().method,
            Method::ApiKey
        );
        let p = auth.authenticate(&jwt.sign(&claims(60))).await.unwrap();
        assert_eq!(
            (p.method, p.subject.as_str()),
            (Method::Oidc, "alice@example.com")
        );
        assert!(matches!(
            auth.authenticate("").await,
            Err(AuthError::Missing(_))
        ));
        assert!(
            auth.missing_hint()
                .contains("OIDC token from https://idp.example.com")
        );
        let only_keys = Authenticator::from_parts(apikey::ApiKeys::empty(), None, vec![]);
        let e = only_keys
            .authenticate("nxk_x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not configured here"), "{e}");
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer("Bearer abc").unwrap(), "abc");
        assert_eq!(bearer("bearer  abc ").unwrap(), "abc");
        assert!(
            bearer("Basic dXNlcg==")
                .unwrap_err()
                .to_string()
                .contains("scheme 'Basic'")
        );
        assert!(bearer("Bearer").is_err());
    }

    #[test]
    fn none_is_the_default_and_allows_setup_without_config() {
        let stop = CancellationToken::new();
        assert!(!Authenticator::default().enabled());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Authenticator::start(&AuthConfig::default(), &stop).unwrap();
            assert!(!a.enabled());
            let bad = AuthConfig {
                mode: Some(AuthMode::Required),
                ..AuthConfig::default()
            };
            assert!(Authenticator::start(&bad, &stop).is_err());
        });
    }
}
