//! Every metric of authentication and authorization (bounded labels only: never a subject).

/// Authentication outcomes.
pub const AUTHENTICATIONS: &str = "nexus_auth_authentications_total";
/// Authorization refusals.
pub const DENIALS: &str = "nexus_auth_denials_total";
/// Fetches of the OIDC issuer's keys.
pub const JWKS_FETCHES: &str = "nexus_auth_jwks_fetches_total";
/// Lookups of the verified-token cache.
pub const TOKEN_CACHE: &str = "nexus_auth_token_cache_total";

/// Declares the metrics (HELP texts).
pub fn describe() {
    metrics::describe_counter!(
        AUTHENTICATIONS,
        "API calls by authentication outcome: method (oidc, api_key, run_token, none) and \
         outcome (ok; missing, invalid: answered 401; unavailable: 503 while the identity \
         provider's keys are not loaded)"
    );
    metrics::describe_counter!(
        DENIALS,
        "API calls refused with 403 by the authorization rules or the run-subtree rule, by action \
         (submit, read, cancel)"
    );
    metrics::describe_counter!(
        JWKS_FETCHES,
        "Fetches of the OIDC issuer's discovery document and signing keys, by outcome (ok, failed)"
    );
    metrics::describe_counter!(
        TOKEN_CACHE,
        "OIDC token verifications by cache result (hit: verified before, no signature check; miss)"
    );
}

/// Counts an authentication.
pub fn authenticated(method: &'static str, outcome: &'static str) {
    metrics::counter!(AUTHENTICATIONS, "method" => method, "outcome" => outcome).increment(1);
}

/// Counts a refusal.
pub fn denied(action: &'static str) {
    metrics::counter!(DENIALS, "action" => action).increment(1);
}

/// Counts a key fetch.
pub fn jwks_fetch(ok: bool) {
    metrics::counter!(JWKS_FETCHES, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Counts a cache lookup.
pub fn token_cache(hit: bool) {
    metrics::counter!(TOKEN_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}
