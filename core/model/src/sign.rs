//! HMAC-SHA256 signing of URLs and run-scoped tokens.
//!
//! The MAC input is canonical and length-prefixed: a domain-separation label comes first, then
//! every field, each written as its length (`u32`, little endian) followed by its bytes. Two
//! different field lists therefore never produce the same MAC input (the reference implementation
//! concatenated fields without separators, so `("GE", "T/x")` and `("GET", "/x")` collided).
//!
//! * Signed URLs carry the query string `exp=<unix secs>&sig=<base64url, no padding>`; the MAC
//!   covers the label `nexus-url-v1`, the HTTP method, the path and the expiry.
//! * Run tokens look like `v1.<exp>.<sig>`; the MAC covers the label `run-token`, the run id and
//!   the expiry.
//!
//! Signatures are compared in constant time. The signature is checked before the expiry, so an
//! altered expiry is reported as forged, not as expired.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::run::RunId;
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation label of signed URLs.
const URL_LABEL: &[u8] = b"nexus-url-v1";
/// Domain-separation label of run tokens.
const RUN_TOKEN_LABEL: &[u8] = b"run-token";
/// Version prefix of run tokens.
const RUN_TOKEN_VERSION: &str = "v1";
/// Length in bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// Alias kept for documentation that names the URL signer.
pub type UrlSigner = Signer;

/// Seconds since the Unix epoch (0 if the clock is before the epoch).
#[must_use]
pub fn now_secs() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Formats Unix seconds as RFC 3339 (UTC); values before the epoch are shown as the epoch.
fn format_secs(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What was being checked, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A signed URL.
    Url,
    /// A run-scoped token.
    RunToken,
}

impl Subject {
    fn forged_hint(self) -> &'static str {
        match self {
            Subject::Url => "URL was altered or signed by another key",
            Subject::RunToken => {
                "token was altered, issued for another run, or signed by another key"
            }
        }
    }
    fn renew_hint(self) -> &'static str {
        match self {
            Subject::Url => "ask for a fresh URL",
            Subject::RunToken => "the run must be given a fresh token",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Url => f.write_str("URL signature"),
            Subject::RunToken => f.write_str("run token"),
        }
    }
}

/// Why a signature or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The signature or token could not be parsed.
    #[error("malformed {subject}: {reason}")]
    Malformed {
        /// What was checked.
        subject: Subject,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not match.
    #[error("{subject} does not match ({})", subject.forged_hint())]
    Forged {
        /// What was checked.
        subject: Subject,
    },
    /// The signature matches but has expired.
    #[error("{subject} expired at {}; {}", format_secs(*at), subject.renew_hint())]
    Expired {
        /// What was checked.
        subject: Subject,
        /// Expiry, Unix seconds.
        at: i64,
    },
}

/// Signs and verifies URLs and run tokens with one HMAC-SHA256 key.
#[derive(Clone, Debug)]
pub struct Signer {
    key: Secret<Arc<[u8]>>,
}

impl Signer {
    /// Builds a signer from a secret key.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: Secret::new(Arc::from(secret)),
        }
    }

    /// Builds a signer with a fresh random 32-byte key (from the OS random source, via uuid).
    #[must_use]
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self::new(&key)
    }

    /// Computes the MAC over the label and the fields, each length-prefixed.
    fn mac(&self, label: &[u8], fields: &[&[u8]]) -> [u8; TAG_LEN] {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        #[allow(clippy::expect_used)]
        let mut mac =
            HmacSha256::new_from_slice(self.key.expose()).expect("HMAC accepts any key length");
        for field in std::iter::once(&label).chain(fields.iter()) {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_le_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    fn url_mac(&self, method: &str, path: &str, exp: i64) -> [u8; TAG_LEN] {
        let exp = exp.to_string();
        self.mac(
            URL_LABEL,
            &[method.as_bytes(), path.as_bytes(), exp.as_bytes()],
        )
    }

    fn token_mac(&self, run_id: RunId, exp: i64) -> [u8; TAG_LEN] {
        let run = run_id.to_string();
        let exp = exp.to_string();
        self.mac(RUN_TOKEN_LABEL, &[run.as_bytes(), exp.as_bytes()])
    }

    /// Returns the query string `exp=<unix secs>&sig=<base64url no pad>` for `method`
    /// (`GET`/`PUT`) on `path`.
    #[must_use]
    pub fn sign_url(&self, method: &str, path: &str, expires_at_secs: i64) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.url_mac(method, path, expires_at_secs));
        format!("exp={expires_at_secs}&sig={sig}")
    }

    /// Checks a URL signature: `Ok` when `sig` matches (constant-time) and `now_secs < exp`.
    ///
    /// # Errors
    /// [`SignError::Malformed`] when `sig` is not a base64url tag, [`SignError::Forged`] when
    /// it does not match, [`SignError::Expired`] when it matches but `exp` has passed.
    pub fn verify_url(
        &self,
        method: &str,
        path: &str,
        exp: i64,
        sig: &str,
        now_secs: i64,
    ) -> Result<(), SignError> {
        let given = decode_tag(Subject::Url, sig)?;
        let expected = self.url_mac(method, path, exp);
        check(Subject::Url, &expected, &given, exp, now_secs)
    }

    /// Returns a run-scoped token `v1.<exp>.<sig>`, MAC over (`run-token`, run id, exp).
    #[must_use]
    pub fn run_token(&self, run_id: RunId, expires_at_secs: i64) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.token_mac(run_id, expires_at_secs));
        format!("{RUN_TOKEN_VERSION}.{expires_at_secs}.{sig}")
    }

    /// Checks a run token for `run_id`.
    ///
    /// # Errors
    /// [`SignError::Malformed`] when the token cannot be parsed, [`SignError::Forged`] when it
    /// was not issued for this run by this key, [`SignError::Expired`] when it has expired.
    pub fn verify_run_token(
        &self,
        run_id: RunId,
        token: &str,
        now_secs: i64,
    ) -> Result<(), SignError> {
        let subject = Subject::RunToken;
        let malformed = |reason: &str| SignError::Malformed {
            subject,
            reason: reason.to_owned(),
        };
        let mut parts = token.split('.');
        let (Some(version), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected the form v1.<expiry>.<signature>"));
        };
        if version != RUN_TOKEN_VERSION {
            return Err(malformed("unknown token version (expected v1)"));
        }
        let exp = parse_exp(subject, exp)?;
        let given = decode_tag(subject, sig)?;
        let expected = self.token_mac(run_id, exp);
        check(subject, &expected, &given, exp, now_secs)
    }
}

/// Parses an expiry in Unix seconds, written the one way Nexus writes it: decimal digits, no sign,
/// no leading zero. Any other spelling of the same number (`+17…`, `017…`) is refused, so a
/// signed URL or run token has exactly one accepted form (found by fuzzing: `i64::from_str`
/// takes a leading `+`).
///
/// # Errors
/// [`SignError::Malformed`] when `exp` is not such a number.
pub fn parse_exp(subject: Subject, exp: &str) -> Result<i64, SignError> {
    let canonical = !exp.is_empty()
        && exp.bytes().all(|b| b.is_ascii_digit())
        && (exp.len() == 1 || !exp.starts_with('0'));
    canonical
        .then(|| exp.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| SignError::Malformed {
            subject,
            reason: format!("expiry {exp:?} is not a number of seconds since the Unix epoch"),
        })
}

fn decode_tag(subject: Subject, sig: &str) -> Result<[u8; TAG_LEN], SignError> {
    let malformed = || SignError::Malformed {
        subject,
        reason: "signature is not a 32-byte base64url (unpadded) value".to_owned(),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(sig.as_bytes())
        .map_err(|_| malformed())?;
    <[u8; TAG_LEN]>::try_from(bytes.as_slice()).map_err(|_| malformed())
}

fn check(
    subject: Subject,
    expected: &[u8; TAG_LEN],
    given: &[u8; TAG_LEN],
    exp: i64,
    now_secs: i64,
) -> Result<(), SignError> {
    if !bool::from(expected.ct_eq(given)) {
        return Err(SignError::Forged { subject });
    }
    if now_secs >= exp {
        return Err(SignError::Expired { subject, at: exp });
    }
    Ok(())
}

/// Returns the signed GET URL of a run's payload as the scheduler serves it at
/// `{base}/data/v1/payloads/{alg}/{id}` (inline payloads from the record, stored ones by a
/// redirect), valid for the run's `payload_valid_for` from now. Minted at dispatch time, by the
/// scheduler or by the supervisor when it resubmits a run.
#[must_use]
pub fn payload_url(base: &str, signer: &Signer, run: &crate::run::Run) -> String {
    let path = format!("/data/v1/payloads/{}/{}", run.algorithm, run.id);
    let secs = i64::try_from(run.payload_valid_for.as_secs()).unwrap_or(i64::MAX / 2);
    let exp = now_secs().saturating_add(secs);
    format!(
        "{}{path}?{}",
        base.trim_end_matches('/'),
        signer.sign_url("GET", &path, exp)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn parse(q: &str) -> (i64, String) {
        let mut exp = None;
        let mut sig = None;
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "exp" => exp = Some(v.parse().unwrap()),
                "sig" => sig = Some(v.to_owned()),
                _ => panic!("unexpected {k}"),
            }
        }
        (exp.unwrap(), sig.unwrap())
    }

    #[test]
    fn url_round_trip() {
        let s = Signer::new(b"secret");
        let (exp, sig) = parse(&s.sign_url("GET", "/data/v1/objects/a", NOW + 60));
        assert_eq!(exp, NOW + 60);
        s.verify_url("GET", "/data/v1/objects/a", exp, &sig, NOW)
            .unwrap();
    }

    #[test]
    fn url_tampering_is_forged() {
        let s = Signer::new(b"secret");
        let (exp, sig) = parse(&s.sign_url("GET", "/p/a", NOW + 60));
        let forged = |r: Result<(), SignError>| matches!(r, Err(SignError::Forged { .. }));
        assert!(forged(s.verify_url("GET", "/p/b", exp, &sig, NOW)));
        assert!(forged(s.verify_url("PUT", "/p/a", exp, &sig, NOW)));
        assert!(forged(s.verify_url("GET", "/p/a", exp + 1000, &sig, NOW)));
        let mut bytes = URL_SAFE_NO_PAD.decode(&sig).unwrap();
        bytes[0] ^= 1;
        let bad = URL_SAFE_NO_PAD.encode(bytes);
        assert!(forged(s.verify_url("GET", "/p/a", exp, &bad, NOW)));
        // Field boundaries matter: "GE" + "T/p/a" is not "GET" + "/p/a".
        assert!(forged(s.verify_url("GE", "T/p/a", exp, &sig, NOW)));
    }

    #[test]
    fn url_expired() {
        let s = Signer::new(b"secret");
        let (exp, sig) = parse(&s.sign_url("GET", "/p", NOW));
        let err = s.verify_url("GET", "/p", exp, &sig, NOW).unwrap_err();
        assert_eq!(
            err,
            SignError::Expired {
                subject: Subject::Url,
                at: NOW
            }
        );
        assert!(
            err.to_string().contains("expired at 2023-11-14T22:13:20Z"),
            "{err}"
        );
    }

    #[test]
    fn url_malformed_sig() {
        let s = Signer::new(b"secret");
        for sig in ["", "!!!", "abc", "AAAA", &"A".repeat(100), "é"] {
            assert!(
                matches!(
                    s.verify_url("GET", "/p", NOW + 5, sig, NOW),
                    Err(SignError::Malformed { .. })
                ),
                "{sig:?}"
            );
        }
    }

    #[test]
    fn different_keys_do_not_verify() {
        let a = Signer::new(b"a");
        let b = Signer::random();
        let (exp, sig) = parse(&a.sign_url("GET", "/p", NOW + 60));
        assert!(matches!(
            b.verify_url("GET", "/p", exp, &sig, NOW),
            Err(SignError::Forged { .. })
        ));
        let run = RunId::new();
        let t = a.run_token(run, NOW + 60);
        assert!(matches!(
            b.verify_run_token(run, &t, NOW),
            Err(SignError::Forged { .. })
        ));
        assert!(matches!(
            Signer::random().verify_run_token(run, &Signer::random().run_token(run, NOW + 60), NOW),
            Err(SignError::Forged { .. })
        ));
    }

    #[test]
    fn token_round_trip_and_scoping() {
        let s = Signer::new(b"k");
        let a = RunId::new();
        let b = RunId::new();
        let t = s.run_token(a, NOW + 60);
        assert!(t.starts_with("v1."));
        s.verify_run_token(a, &t, NOW).unwrap();
        assert!(matches!(
            s.verify_run_token(b, &t, NOW),
            Err(SignError::Forged { .. })
        ));
        assert!(matches!(
            s.verify_run_token(a, &t, NOW + 60),
            Err(SignError::Expired { .. })
        ));
        // Altered expiry is forged, not accepted.
        let sig = t.rsplit('.').next().unwrap();
        let altered = format!("v1.{}.{sig}", NOW + 6000);
        assert!(matches!(
            s.verify_run_token(a, &altered, NOW),
            Err(SignError::Forged { .. })
        ));
        let err = s.verify_run_token(b, &t, NOW).unwrap_err();
        assert!(err.to_string().contains("another run"), "{err}");
    }

    #[test]
    fn token_malformed_never_panics() {
        let s = Signer::new(b"k");
        let run = RunId::new();
        let good = s.run_token(run, NOW + 60);
        let sig = good.rsplit('.').next().unwrap().to_owned();
        let cases = [
            String::new(),
            "garbage".to_owned(),
            "v1".to_owned(),
            "v1..".to_owned(),
            format!("v1.abc.{sig}"),
            format!("v2.{}.{sig}", NOW + 60),
            format!("{good}.extra"),
            format!("v1.{}.", NOW + 60),
            format!("v1.{}.***", NOW + 60),
            "v1.99999999999999999999999.AAAA".to_owned(),
            "....".to_owned(),
        ];
        for c in &cases {
            assert!(
                matches!(
                    s.verify_run_token(run, c, NOW),
                    Err(SignError::Malformed { .. })
                ),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_token_has_one_spelling() {
        let s = Signer::new(b"super-secret-key");
        let run = RunId(uuid::Uuid::from_u128(7));
        let token = s.run_token(run, 2_000_000_000);
        assert!(s.verify_run_token(run, &token, 1_900_000_000).is_ok());
        for other in [
            token.replacen(".2000000000.", ".+2000000000.", 1),
            token.replacen(".2000000000.", ".02000000000.", 1),
            token.replacen(".2000000000.", ". 2000000000.", 1),
        ] {
            assert!(
                s.verify_run_token(run, &other, 1_900_000_000).is_err(),
                "{other} accepted"
            );
        }
        assert!(parse_exp(Subject::RunToken, "0").is_ok());
        assert!(parse_exp(Subject::RunToken, "-1").is_err());
        assert!(parse_exp(Subject::RunToken, "").is_err());
    }

    #[test]
    fn debug_hides_key() {
        let s = Signer::new(b"super-secret-key");
        let d = format!("{s:?}");
        assert!(!d.contains("super"), "{d}");
        assert!(d.contains("redacted"));
    }

    #[test]
    fn random_keys_differ() {
        let a = Signer::random();
        let b = Signer::random();
        assert_ne!(a.sign_url("GET", "/p", NOW), b.sign_url("GET", "/p", NOW));
    }
}
