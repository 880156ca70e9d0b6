//! OIDC bearer tokens: the issuer's keys (discovery, JWKS) and the verification of a token.
//!
//! * **Keys.** [`Oidc::run`] fetches `<issuer>/.well-known/openid-configuration` (its `issuer`
//!   must equal the configured one), then its `jwks_uri`, at start (retried every 5 s until it
//!   works: until then JWT callers get 503, API keys and run tokens work), then every
//!   `jwks_refresh`. A token naming a key id the scheduler does not know triggers a fetch at
//!   once (at most every `min_refresh_interval`), so a key rotated in by the provider is accepted
//!   without waiting; a key rotated out stops verifying at the next fetch. A failed fetch keeps
//!   the keys in use.
//! * **Verification.** Asymmetric algorithms only (the configured list); `iss`, `aud` (one of
//!   the configured audiences), `exp` and `nbf` with `clock_skew`; the subject and groups come
//!   from the claim mapping. Every refusal says what is wrong with the token.
//! * **Cache.** A verified token is remembered until it expires (bounded by `cache_size`; the
//!   cache is emptied when the key set changes), so a client's repeated calls cost a map lookup,
//!   not a signature check.
//!
//! What it must not do: accept a token whose signature was not checked against a key fetched
//! from the issuer, log a token, or block a request on a fetch for longer than the fetch timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method as HttpMethod;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nexus_http::client::HttpClient;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{ClaimMapping, OidcConfig, is_loopback_url};
use crate::{AuthError, Method, Principal, metrics};

/// How long one fetch of the discovery document or the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry interval of the first fetch, until it succeeds.
const START_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    key: DecodingKey,
}

#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<Key>,
    /// Key ids of the set (to notice a change).
    ids: Vec<String>,
    loaded: bool,
}

#[derive(Debug, Clone)]
struct Cached {
    principal: Principal,
    exp: u64,
}

/// An issuer's verifier.
#[derive(Debug)]
pub struct Oidc {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: Option<HttpClient>,
    keys: RwLock<Arc<KeySet>>,
    /// When keys were last fetched; held while a fetch runs (one fetch at a time).
    fetching: tokio::sync::Mutex<Option<Instant>>,
    cache: Mutex<HashMap<String, Cached>>,
    /// Why the last fetch failed (shown while no key was ever loaded).
    last_error: Mutex<Option<String>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Why the keys could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(String);

impl Oidc {
    /// A verifier for `config` (keys not fetched yet: see [`Self::run`]).
    ///
    /// # Errors
    /// The CA file of `ca_file` cannot be used.
    pub fn new(config: OidcConfig) -> Result<Arc<Self>, nexus_http::tls::TlsError> {
        let http = HttpClient::new(
            config.ca_file.as_deref(),
            FETCH_TIMEOUT,
            4 * 1024 * 1024,
            concat!("nexus/", env!("CARGO_PKG_VERSION")),
        )?;
        Ok(Self::build(config, Some(http), KeySet::default()))
    }

    fn build(config: OidcConfig, http: Option<HttpClient>, keys: KeySet) -> Arc<Self> {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        Arc::new(Self {
            config,
            algorithms,
            http,
            keys: RwLock::new(Arc::new(keys)),
            fetching: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
        })
    }

    /// A verifier over a fixed key set (a JWKS document), never fetching: for tests.
    ///
    /// # Errors
    /// The document is not a JWKS.
    pub fn with_jwks(config: OidcConfig, jwks: &Value) -> Result<Arc<Self>, FetchError> {
        Ok(Self::build(config, None, parse_jwks(jwks)?))
    }

    /// The issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the keys until `stop`: at once (retrying every 5 s until it works), then every
    /// `jwks_refresh`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = match self.refresh(true).await {
                Ok(()) => self.config.jwks_refresh,
                Err(e) => {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "cannot fetch the OIDC issuer's keys; keeping the keys in use, retrying");
                    if self.key_set().loaded {
                        START_RETRY.max(self.config.jwks_refresh / 10)
                    } else {
                        START_RETRY
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fetches the discovery document and the keys now (`force`), or only when the last fetch
    /// is older than `min_refresh_interval`; replaces the keys when it worked.
    ///
    /// # Errors
    /// The issuer or its keys cannot be fetched or parsed.
    pub async fn refresh(&self, force: bool) -> Result<(), FetchError> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        let mut last = self.fetching.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.config.min_refresh_interval) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let result = fetch(http, &self.config).await;
        metrics::jwks_fetch(result.is_ok());
        let mut guard = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(set) => {
                if set.ids != guard.ids {
                    tracing::info!(issuer = %self.config.issuer, keys = ?set.ids, "OIDC signing keys loaded");
                    // A key that left the set must not keep verifying through the cache.
                    self.cache
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                }
                *guard = Arc::new(set);
                drop(guard);
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Ok(())
            }
            Err(e) => {
                drop(guard);
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Verifies `token`; returns who it names.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] with what is wrong (expired, wrong audience, unknown key…);
    /// [`AuthError::Unavailable`] while the issuer's keys have never been fetched.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = now_secs();
        let skew = self.config.clock_skew.as_secs();
        if let Some(hit) = self.cached(token, now, skew) {
            metrics::token_cache(true);
            return Ok(hit);
        }
        metrics::token_cache(false);
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            AuthError::Invalid(format!(
                "the bearer token is neither a configured API key nor a JWT ({e})"
            ))
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "the token is signed with {:?}, which is not accepted (auth.oidc.algorithms: {})",
                header.alg,
                self.config.algorithms.join(", ")
            )));
        }
        let kid = header.kid.as_deref();
        let key = match self.find(kid, header.alg) {
            Some(k) => k,
            None => {
                if let Err(e) = self.refresh(false).await {
                    tracing::debug!(error = %e, "key fetch for an unknown key id failed");
                }
                let set = self.key_set();
                if !set.loaded {
                    return Err(AuthError::Unavailable(format!(
                        "the keys of the identity provider {} are not loaded yet{}; retry shortly",
                        self.config.issuer,
                        self.last_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .as_deref()
                            .map(|e| format!(" (last attempt: {e})"))
                            .unwrap_or_default()
                    )));
                }
                self.find(kid, header.alg).ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "the token is signed by key '{}', which the identity provider {} does not publish (is it a token of another issuer?)",
                        kid.unwrap_or("(no kid)"),
                        self.config.issuer
                    ))
                })?
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = skew;
        v.validate_nbf = true;
        v.set_audience(&self.config.audiences);
        v.set_issuer(&[&self.config.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| self.explain(&e, token, now))?;
        let principal = map_claims(&data.claims, &self.config.claims)?;
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(now);
        self.remember(token, &principal, exp, now, skew);
        Ok(principal)
    }

    fn cached(&self, token: &str, now: u64, skew: u64) -> Option<Principal> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cache.get(token) {
            Some(c) if c.exp.saturating_add(skew) > now => Some(c.principal.clone()),
            Some(_) => {
                cache.remove(token);
                None
            }
            None => None,
        }
    }

    fn remember(&self, token: &str, p: &Principal, exp: u64, now: u64, skew: u64) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= self.config.cache_size {
            cache.retain(|_, c| c.exp.saturating_add(skew) > now);
            if cache.len() >= self.config.cache_size {
                // Full of live tokens: start over rather than track recency on the hot path.
                cache.clear();
            }
        }
        cache.insert(
            token.to_owned(),
            Cached {
                principal: p.clone(),
                exp,
            },
        );
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let set = self.key_set();
        let fits = |k: &&Key| {
            k.key.family() == alg.family()
                && k.alg.as_deref().is_none_or(|a| a == format!("{alg:?}"))
        };
        match kid {
            Some(kid) => set
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid)),
            // Without a key id, the one key of the family (ambiguity is refused).
            None => {
                let mut it = set.keys.iter().filter(fits);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
        .map(|k| k.key.clone())
    }

    /// The 401 message of a failed verification.
    fn explain(&self, e: &jsonwebtoken::errors::Error, token: &str, now: u64) -> AuthError {
        use jsonwebtoken::errors::ErrorKind as K;
        let claims = unverified_claims(token);
        let claim = |k: &str| claims.get(k).cloned().unwrap_or(Value::Null);
        let issuer = &self.config.issuer;
        AuthError::Invalid(match e.kind() {
            K::ExpiredSignature => {
                let exp = claim("exp").as_u64().unwrap_or(0);
                format!(
                    "the token expired at {} ({}s ago; clock skew allowed: {}s): get a new one from {issuer}",
                    rfc3339(exp),
                    now.saturating_sub(exp),
                    self.config.clock_skew.as_secs()
                )
            }
            K::ImmatureSignature => format!(
                "the token is not valid before {} (nbf)",
                rfc3339(claim("nbf").as_u64().unwrap_or(0))
            ),
            K::InvalidAudience => format!(
                "the token is for audience {}, not for this API: expected one of [{}] (auth.oidc.audiences); request a token for that client id",
                claim("aud"),
                self.config.audiences.join(", ")
            ),
            K::InvalidIssuer => format!(
                "the token was issued by {}, not by {issuer} (auth.oidc.issuer)",
                claim("iss")
            ),
            K::InvalidSignature => {
                "the token's signature does not verify with the identity provider's key".to_owned()
            }
            K::MissingRequiredClaim(c) => format!("the token has no '{c}' claim"),
            K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => {
                format!("the bearer token is not a well-formed JWT ({e})")
            }
            _ => format!("the token was refused: {e}"),
        })
    }
}

/// The claims of a token, without verifying it (for error messages only).
fn unverified_claims(token: &str) -> serde_json::Map<String, Value> {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, Value>>(&b).ok())
        .unwrap_or_default()
}

/// The claim at `path`: the key itself when present (namespaced claims hold dots), else a path
/// through nested objects.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// Who the claims name, by the mapping.
///
/// # Errors
/// The subject claim is missing or not a string/number; the groups claim is not a string or a
/// list of strings.
pub fn map_claims(claims: &Value, mapping: &ClaimMapping) -> Result<Principal, AuthError> {
    let subject = match claim_at(claims, &mapping.subject) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(AuthError::Invalid(format!(
                "the token has no '{}' claim to name the caller (auth.oidc.claims.subject); request a token with that claim (e.g. scope email) or map another claim",
                mapping.subject
            )));
        }
    };
    let groups = match claim_at(claims, &mapping.groups) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_str().map(str::to_owned).ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "the token's '{}' claim must list group names as strings (auth.oidc.claims.groups)",
                        mapping.groups
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(AuthError::Invalid(format!(
                "the token's '{}' claim is neither a string nor a list of strings (auth.oidc.claims.groups)",
                mapping.groups
            )));
        }
    };
    Ok(Principal {
        subject,
        groups,
        method: Method::Oidc,
    })
}

fn check_fetch_url(url: &str, what: &str) -> Result<(), FetchError> {
    if url.starts_with("https://") || (url.starts_with("http://") && is_loopback_url(url)) {
        Ok(())
    } else {
        Err(FetchError(format!(
            "{what} '{url}' is not an https:// URL (http:// only on loopback)"
        )))
    }
}

async fn get_json(http: &HttpClient, url: &str) -> Result<Value, FetchError> {
    let a = http
        .send(
            HttpMethod::GET,
            url,
            &[("accept", "application/json")],
            None,
        )
        .await
        .map_err(|e| FetchError(format!("GET {url}: {e}")))?;
    if !a.status.is_success() {
        return Err(FetchError(format!(
            "GET {url}: status {} ({})",
            a.status,
            a.text().chars().take(200).collect::<String>()
        )));
    }
    a.json()
        .map_err(|e| FetchError(format!("GET {url}: not JSON: {e}")))
}

async fn fetch(http: &HttpClient, config: &OidcConfig) -> Result<KeySet, FetchError> {
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        config.issuer.trim_end_matches('/')
    );
    let doc = get_json(http, &discovery).await?;
    let issuer = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if issuer != config.issuer {
        return Err(FetchError(format!(
            "{discovery} names issuer '{issuer}', not '{}': set auth.oidc.issuer to the provider's exact issuer (tokens carry it in `iss`)",
            config.issuer
        )));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| FetchError(format!("{discovery} has no jwks_uri")))?;
    check_fetch_url(jwks_uri, "jwks_uri")?;
    parse_jwks(&get_json(http, jwks_uri).await?)
}

fn parse_jwks(doc: &Value) -> Result<KeySet, FetchError> {
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| FetchError("the JWKS document has no `keys` list".into()))?;
    let mut keys = Vec::new();
    for raw in list {
        // One key of a type this build cannot use does not spoil the others.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            tracing::debug!("skipping a JWKS entry that is not a usable key");
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            continue;
        }
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg: raw.get("alg").and_then(Value::as_str).map(str::to_owned),
            key,
        });
    }
    if keys.is_empty() {
        return Err(FetchError(
            "the JWKS document holds no usable signing key (RSA, EC or OKP)".into(),
        ));
    }
    let mut ids: Vec<String> = keys.iter().filter_map(|k| k.kid.clone()).collect();
    ids.sort();
    Ok(KeySet {
        keys,
        ids,
        loaded: true,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// An ES256 signing key and its JWK.
    pub(crate) struct TestKey {
        pub kid: String,
        enc: EncodingKey,
        pub jwk: Value,
    }

    impl TestKey {
        pub(crate) fn new(kid: &str) -> Self {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = kp.public_key_raw();
            // Uncompressed point: 0x04 || x || y.
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let jwk = json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            });
            Self {
                kid: kid.into(),
                enc: EncodingKey::from_ec_der(&kp.serialize_der()),
                jwk,
            }
        }

        pub(crate) fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
        }
    }

    pub(crate) const ISSUER: &str = "https://idp.example.com/realms/nexus";

    pub(crate) fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISSUER.into(),
            audiences: vec!["nexus".into()],
            claims: ClaimMapping {
                subject: "email".into(),
                groups: "realm_access.roles".into(),
            },
            ..OidcConfig::default()
        }
    }

    pub(crate) fn claims(exp_in: i64) -> Value {
        let now = now_secs() as i64;
        json!({
            "iss": ISSUER, "aud": "nexus", "sub": "u-1", "email": "alice@example.com",
            "realm_access": {"roles": ["team-a"]}, "exp": now + exp_in, "iat": now,
        })
    }

    #[tokio::test]
    async fn tokens_are_verified_and_mapped() {
        let key = TestKey::new("k1");
        let oidc = Oidc::with_jwks(config(), &json!({"keys": [key.jwk]})).unwrap();
        let p = oidc.verify(&key.sign(&claims(300))).await.unwrap();
        assert_eq!(p.subject, "alice@example.com");
        assert_eq!(p.groups, vec!["team-a".to_owned()]);
        // Twice: the second comes from the cache, same answer.
        let t = key.sign(&claims(300));
        assert_eq!(
            oidc.verify(&t).await.unwrap(),
            oidc.verify(&t).await.unwrap()
        );
    }

    #[tokio::test]
    async fn refusals_say_what_is_wrong() {
        let key = TestKey::new("k1");
        let other = TestKey::new("k2");
        let oidc = Oidc::with_jwks(config(), &json!({"keys": [key.jwk]})).unwrap();
        let refused = |t: String| {
            let oidc = oidc.clone();
            async move {
                match oidc.verify(&t).await {
                    Err(AuthError::Invalid(m)) => m,
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        let m = refused(key.sign(&claims(-3600))).await;
        assert!(
            m.contains("the token expired at") && m.contains("clock skew allowed: 60s"),
            "{m}"
        );
        // Within the skew: still accepted.
        oidc.verify(&key.sign(&claims(-30))).await.unwrap();
        let mut c = claims(300);
        c["aud"] = json!("other-app");
        let m = refused(key.sign(&c)).await;
        assert!(
            m.contains("audience \"other-app\"") && m.contains("expected one of [nexus]"),
            "{m}"
        );
        let mut c = claims(300);
        c["iss"] = json!("https://evil.example.com");
        assert!(
            refused(key.sign(&c))
                .await
                .contains("not by https://idp.example.com")
        );
        let m = refused(other.sign(&claims(300))).await;
        assert!(m.contains("signed by key 'k2'"), "{m}");
        let mut c = claims(300);
        c.as_object_mut().unwrap().remove("email");
        assert!(refused(key.sign(&c)).await.contains("no 'email' claim"));
        assert!(
            refused("not-a-jwt".into())
                .await
                .contains("neither a configured API key nor a JWT")
        );
        // A forged signature: the payload of one token with the signature of another.
        let (a, b) = (key.sign(&claims(300)), key.sign(&claims(301)));
        let forged = format!(
            "{}.{}",
            a.rsplit_once('.').unwrap().0,
            b.rsplit_once('.').unwrap().1
        );
        assert!(refused(forged).await.contains("signature does not verify"));
        // HS256 with the public key as a secret (algorithm confusion) is refused up front.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(300),
            &EncodingKey::from_secret(b"x"),
        )
        .unwrap();
        assert!(refused(hs).await.contains("not accepted"));
    }

    #[test]
    fn claim_mapping_handles_shapes() {
        let m = ClaimMapping {
            subject: "sub".into(),
            groups: "https://example.com/groups".into(),
        };
        let p = map_claims(&json!({"sub": 42, "https://example.com/groups": "ops"}), &m).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.groups),
            ("42", vec!["ops".to_owned()])
        );
        assert!(map_claims(&json!({"sub": "x", "https://example.com/groups": [1]}), &m).is_err());
        let p = map_claims(&json!({"sub": "x"}), &m).unwrap();
        assert!(p.groups.is_empty());
    }

    /// A loopback issuer whose JWKS the test can change; returns its URL.
    async fn serve_issuer(jwks: Arc<Mutex<Value>>, claim_issuer: Option<String>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/idp", l.local_addr().unwrap());
        let doc = json!({
            "issuer": claim_issuer.unwrap_or_else(|| url.clone()),
            "jwks_uri": format!("{url}/keys"),
        });
        let app = axum::Router::new()
            .route(
                "/idp/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(doc) }),
            )
            .route(
                "/idp/keys",
                axum::routing::get(move || {
                    let v = jwks.lock().unwrap().clone();
                    async move { axum::Json(v) }
                }),
            );
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    #[tokio::test]
    async fn keys_are_discovered_and_rotation_is_followed() {
        let (k1, k2) = (TestKey::new("k1"), TestKey::new("k2"));
        let jwks = Arc::new(Mutex::new(json!({"keys": [k1.jwk]})));
        let url = serve_issuer(jwks.clone(), None).await;
        let config = OidcConfig {
            issuer: url.clone(),
            min_refresh_interval: Duration::ZERO,
            ..config()
        };
        let oidc = Oidc::new(config).unwrap();
        let claims_for = |extra: i64| {
            let mut c = claims(300 + extra);
            c["iss"] = json!(url);
            c
        };
        let t1 = k1.sign(&claims_for(0));
        // Not fetched yet: the first verification fetches (an unknown key id triggers it).
        assert_eq!(oidc.verify(&t1).await.unwrap().subject, "alice@example.com");
        // The provider rotates: k2 in, k1 out. A k2 token fetches the keys at once.
        *jwks.lock().unwrap() = json!({"keys": [k2.jwk]});
        let t2 = k2.sign(&claims_for(1));
        assert_eq!(oidc.verify(&t2).await.unwrap().subject, "alice@example.com");
        // The key set changed, so the cached k1 token no longer passes.
        match oidc.verify(&t1).await {
            Err(AuthError::Invalid(m)) => assert!(m.contains("signed by key 'k1'"), "{m}"),
            other => panic!("k1 after rotation: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_or_mismatched_issuer_is_reported() {
        let key = TestKey::new("k1");
        let jwks = Arc::new(Mutex::new(json!({"keys": [key.jwk]})));
        let url = serve_issuer(jwks, Some("https://somebody-else.example.com".into())).await;
        let oidc = Oidc::new(OidcConfig {
            issuer: url.clone(),
            ..config()
        })
        .unwrap();
        let e = oidc.refresh(true).await.unwrap_err().to_string();
        assert!(
            e.contains("names issuer 'https://somebody-else.example.com'"),
            "{e}"
        );
        let mut c = claims(300);
        c["iss"] = json!(url);
        match oidc.verify(&key.sign(&c)).await {
            Err(AuthError::Unavailable(m)) => {
                assert!(
                    m.contains("not loaded yet") && m.contains("somebody-else"),
                    "{m}"
                );
            }
            other => panic!("expected 503: {other:?}"),
        }
    }
}
