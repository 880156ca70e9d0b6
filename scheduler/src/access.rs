//! Who calls the scheduler's API, and whether they may do what they ask: the one place HTTP v1
//! and gRPC `RunService` authenticate and authorize (issue #21).
//!
//! * **Authentication** ([`identify`]): with `auth.mode: none` every HTTP caller is
//!   [`Caller::Anonymous`] and gRPC keeps its run-token identities, exactly as before. Otherwise a
//!   caller presents `Authorization: Bearer <credential>`: with `x-nexus-run-id` it is a run
//!   token (the algorithm acts as its run, verified with the signing key), without it an API key
//!   or an OIDC token ([`nexus_auth::Authenticator`]). No credential, or one that does not
//!   verify: 401 / `UNAUTHENTICATED` with what is missing.
//! * **Authorization** ([`may`]): a principal needs a rule granting the action on the run's
//!   algorithm or workgroup; a run acts only on itself and its descendants (it reads any run only
//!   while authentication is off, as before); 403 / `PERMISSION_DENIED` says which.
//! * **Audit** ([`audit`]): one line per write (submit, cancel, tag), allowed or refused, when
//!   authentication is on.
//!
//! Routes outside: `/health/*`, `/metrics`, `/openapi.json`, and payloads fetched with the
//! run's signed URL (the signature is the credential).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nexus_auth::{Action, AuthError, Principal, metrics as auth_metrics};
use nexus_http::ApiError;
use nexus_model::run::{Run, RunId};
use nexus_model::sign::now_secs;
use nexus_store::StoreError;
use tonic::Status;

use crate::Scheduler;
use crate::admission::{AdmitError, Admitted, SubmitCheck, SubmitTarget};

/// Header (and gRPC metadata key) naming the calling run, with its run token as the bearer.
pub const RUN_ID_HEADER: &str = "x-nexus-run-id";

/// Who calls.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: anyone, with every right.
    Anonymous,
    /// A person or service account (OIDC token, API key).
    Principal(Principal),
    /// An algorithm, as its run.
    Run(Box<Run>),
}

impl Caller {
    /// Names the caller in audit lines and messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::Principal(p) => p.describe(),
            Self::Run(r) => format!("run {}/{}", r.algorithm, r.id),
        }
    }
}

/// Why a call is refused.
#[derive(Debug)]
pub enum Refusal {
    /// 401 / 503 (identity provider keys not loaded).
    Unauthenticated(AuthError),
    /// 403.
    Forbidden(String),
    /// The store failed while checking.
    Store(StoreError),
    /// Not found (the calling run is gone).
    NotFound(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(AuthError::Unavailable(m)) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
                e.retry_after = Some(5);
                e
            }
            Refusal::Unauthenticated(e) => ApiError::unauthorized(e.to_string()),
            Refusal::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            Refusal::Store(e) => crate::api::store_err(&e),
            Refusal::NotFound(m) => ApiError::unauthorized(m),
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(AuthError::Unavailable(m)) => Status::unavailable(m),
            Refusal::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
            Refusal::Forbidden(m) => Status::permission_denied(m),
            Refusal::Store(e) => Status::new(
                e.kind().grpc_code(),
                format!("run store unavailable, try again: {e}"),
            ),
            Refusal::NotFound(m) => Status::unauthenticated(m),
        }
    }
}

/// Authenticates a caller from its `x-nexus-run-id` and `authorization` values (HTTP headers or
/// gRPC metadata), with authentication on. With it off, see [`identify_legacy`].
///
/// # Errors
/// [`Refusal::Unauthenticated`] with what is missing or wrong.
pub async fn identify(
    s: &Scheduler,
    run_id: Option<&str>,
    authorization: Option<&str>,
) -> Result<Caller, Refusal> {
    let result = identify_inner(s, run_id, authorization).await;
    let method = match (&result, run_id) {
        (_, Some(_)) => "run_token",
        (Ok(Caller::Principal(p)), None) => p.method.as_str(),
        _ => "bearer",
    };
    match &result {
        Ok(_) => auth_metrics::authenticated(method, "ok"),
        Err(Refusal::Unauthenticated(e)) => auth_metrics::authenticated(method, e.reason()),
        Err(_) => auth_metrics::authenticated(method, "invalid"),
    }
    result
}

async fn identify_inner(
    s: &Scheduler,
    run_id: Option<&str>,
    authorization: Option<&str>,
) -> Result<Caller, Refusal> {
    let unauth = |m: String| Refusal::Unauthenticated(AuthError::Invalid(m));
    match (run_id, authorization) {
        (None, None) => Err(Refusal::Unauthenticated(AuthError::Missing(
            s.auth.missing_hint(),
        ))),
        (Some(_), None) => Err(unauth(format!(
            "`{RUN_ID_HEADER}` names a run but no run token came with it: send `Authorization: Bearer <run token>` (NEXUS__RUN_TOKEN)"
        ))),
        (Some(id), Some(h)) => {
            let token = nexus_auth::bearer(h).map_err(Refusal::Unauthenticated)?;
            let rid: RunId = id.parse().map_err(|_| {
                unauth(format!(
                    "`{RUN_ID_HEADER}`: '{}' is not a request id (a UUID)",
                    id.escape_default()
                ))
            })?;
            s.signer
                .verify_run_token(rid, token, now_secs())
                .map_err(|e| unauth(format!("run token of run {rid}: {e}")))?;
            match s.store.get(rid).await? {
                Some(run) => Ok(Caller::Run(Box::new(run))),
                None => Err(Refusal::NotFound(format!("run {rid} no longer exists"))),
            }
        }
        (None, Some(h)) => {
            let token = nexus_auth::bearer(h).map_err(Refusal::Unauthenticated)?;
            s.auth
                .authenticate(token)
                .await
                .map(Caller::Principal)
                .map_err(Refusal::Unauthenticated)
        }
    }
}

/// Authentication off, gRPC: a run with its token (as before authentication existed), else a
/// client with every right.
///
/// # Errors
/// Half an identity, a bad run token.
pub async fn identify_legacy(
    s: &Scheduler,
    run_id: Option<&str>,
    authorization: Option<&str>,
) -> Result<Caller, Refusal> {
    let token = authorization.and_then(|v| v.strip_prefix("Bearer "));
    match (run_id, token) {
        (None, None) => Ok(Caller::Anonymous),
        (Some(_), None) | (None, Some(_)) => {
            Err(Refusal::Unauthenticated(AuthError::Invalid(format!(
                "a run calls with both `{RUN_ID_HEADER}` and `authorization: Bearer <run token>` (NEXUS__REQUEST_ID, NEXUS__RUN_TOKEN); a client with neither"
            ))))
        }
        (Some(_), Some(_)) => identify_inner(s, run_id, authorization).await,
    }
}

/// True when `target` is `me` or one of its descendants.
///
/// # Errors
/// Store failures while walking up from `target`.
pub async fn in_subtree(s: &Scheduler, me: &Run, target: &Run) -> Result<bool, StoreError> {
    if target.root != me.root {
        return Ok(false);
    }
    let mut cur = target.clone();
    while cur.depth > me.depth {
        let Some(p) = cur.parent.as_ref() else { break };
        match s.store.get(p.request_id).await? {
            Some(r) => cur = r,
            None => return Ok(false),
        }
    }
    Ok(cur.id == me.id)
}

/// Whether `caller` may do `action` to `run`.
///
/// # Errors
/// [`Refusal::Forbidden`] saying what is missing; store failures.
pub async fn may(s: &Scheduler, caller: &Caller, action: Action, run: &Run) -> Result<(), Refusal> {
    let refused = match caller {
        Caller::Anonymous => None,
        Caller::Principal(p) => {
            (!s.auth
                .policy()
                .allows(p, action, &run.algorithm, &run.workgroup))
            .then(|| {
                s.auth
                    .policy()
                    .denial(p, action, &run.algorithm, &run.workgroup)
            })
        }
        // Without authentication runs read any run, as they always could.
        Caller::Run(_) if !s.auth.enabled() && action == Action::Read => None,
        Caller::Run(me) => (!in_subtree(s, me, run).await?).then(|| {
            format!(
                "run {} may {action} only itself and its descendants; {} is not one",
                me.id, run.id
            )
        }),
    };
    match refused {
        None => Ok(()),
        Some(m) => {
            auth_metrics::denied(action_label(action));
            Err(Refusal::Forbidden(m))
        }
    }
}

/// The runs of `runs` that `caller` may read.
///
/// # Errors
/// Store failures.
pub async fn readable(s: &Scheduler, caller: &Caller, runs: Vec<Run>) -> Result<Vec<Run>, Refusal> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        match may_quiet(s, caller, Action::Read, &r).await {
            Ok(true) => out.push(r),
            Ok(false) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

async fn may_quiet(
    s: &Scheduler,
    caller: &Caller,
    action: Action,
    run: &Run,
) -> Result<bool, StoreError> {
    Ok(match caller {
        Caller::Anonymous => true,
        Caller::Principal(p) => s
            .auth
            .policy()
            .allows(p, action, &run.algorithm, &run.workgroup),
        Caller::Run(_) if !s.auth.enabled() && action == Action::Read => true,
        Caller::Run(me) => in_subtree(s, me, run).await?,
    })
}

fn action_label(a: Action) -> &'static str {
    match a {
        Action::Submit => "submit",
        Action::Read => "read",
        Action::Cancel | Action::All => "cancel",
    }
}

/// The submission check admission runs once the run's workgroup and parent are known: a
/// principal needs `submit` on the algorithm or the workgroup, a grant naming the workgroup when
/// the run moves to another one than its template's, and `read` on the parent it names.
#[must_use]
pub fn submit_check(s: &Arc<Scheduler>, caller: &Caller) -> Option<SubmitCheck> {
    let Caller::Principal(p) = caller else {
        return None;
    };
    let (s, p) = (s.clone(), p.clone());
    Some(SubmitCheck(Arc::new(move |t: &SubmitTarget<'_>| {
        let policy = s.auth.policy();
        let refuse = |m: String| {
            auth_metrics::denied("submit");
            Err(m)
        };
        if !policy.allows(&p, Action::Submit, t.algorithm, t.workgroup) {
            return refuse(policy.denial(&p, Action::Submit, t.algorithm, t.workgroup));
        }
        if t.workgroup != t.template_workgroup
            && !policy.allows_workgroup(&p, Action::Submit, t.workgroup)
        {
            return refuse(format!(
                "{} may not move runs of algorithm '{}' into workgroup '{}' (customConfiguration.workgroupRef): that needs a rule granting 'submit' with the workgroup named in `workgroups`",
                p.describe(),
                t.algorithm,
                t.workgroup
            ));
        }
        if let Some(parent) = t.parent
            && !policy.allows(&p, Action::Read, &parent.algorithm, &parent.workgroup)
        {
            return refuse(format!(
                "{} may not add children to run {}: it may not read runs of algorithm '{}'",
                p.describe(),
                parent.id,
                parent.algorithm
            ));
        }
        Ok(())
    })))
}

/// Writes the audit line of a write by `caller` (none without authentication: the caller is
/// unknown, and a line per accept would only add volume).
pub fn audit(caller: &Caller, action: &str, algorithm: &str, run: &str, outcome: &str) {
    if !matches!(caller, Caller::Anonymous) {
        nexus_auth::audit::write(&caller.describe(), action, algorithm, run, outcome);
    }
}

/// The audit line of a submission (HTTP v1 and gRPC `CreateRun` alike): the run on success
/// (`ok`, or `ok-existing` for an idempotent repeat), `denied` when a rule refused it; other
/// refusals (bad input, unknown algorithm) are not writes and leave no line.
pub fn audit_submit(caller: &Caller, algorithm: &str, outcome: &Result<Admitted, AdmitError>) {
    match outcome {
        Ok(a) => {
            let result = if a.created { "ok" } else { "ok-existing" };
            audit(caller, "submit", algorithm, &a.id.to_string(), result);
        }
        Err(AdmitError::Forbidden(_)) => audit(caller, "submit", algorithm, "-", "denied"),
        Err(_) => {}
    }
}

/// The `x-nexus-run-id` and `authorization` values of HTTP headers.
#[must_use]
pub fn credentials(headers: &HeaderMap) -> (Option<&str>, Option<&str>) {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    (get(RUN_ID_HEADER), get(header::AUTHORIZATION.as_str()))
}

/// Authenticates an HTTP request (authentication on; the anonymous caller otherwise).
///
/// # Errors
/// 401 (with `WWW-Authenticate`) or 503, as a response.
pub async fn http_caller(s: &Scheduler, headers: &HeaderMap) -> Result<Caller, Response> {
    if !s.auth.enabled() {
        return Ok(Caller::Anonymous);
    }
    let (run_id, authorization) = credentials(headers);
    identify(s, run_id, authorization)
        .await
        .map_err(refusal_response)
}

/// Renders a refusal, with `WWW-Authenticate: Bearer` on a 401.
#[must_use]
pub fn refusal_response(r: Refusal) -> Response {
    let mut resp = ApiError::from(r).into_response();
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"nexus\""),
        );
    }
    resp
}

/// Middleware of the protected routes: authenticates the request and hands the [`Caller`] to
/// the handler (request extension); 401/503 otherwise.
pub async fn authenticate(
    State(s): State<Arc<Scheduler>>,
    mut req: Request,
    next: Next,
) -> Response {
    match http_caller(&s, req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(Arc::new(caller));
            next.run(req).await
        }
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use nexus_auth::apikey::{self, ApiKeys};
    use nexus_auth::config::{ApiKeyEntry, ApiKeysConfig};
    use tower::ServiceExt as _;

    use super::*;
    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler_with_auth;

    /// Log lines written while the test runs.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn auth(key: &str) -> nexus_auth::Authenticator {
        let keys = ApiKeys::load(&ApiKeysConfig {
            keys: vec![ApiKeyEntry {
                name: "ci".into(),
                sha256: apikey::hash(key),
                groups: vec!["team-a".into()],
            }],
            files: vec![],
        })
        .unwrap();
        let rules =
            serde_yaml::from_str("[{groups: [team-a], actions: [submit], algorithms: [knapsack]}]")
                .unwrap();
        nexus_auth::Authenticator::from_parts(keys, None, rules)
    }

    fn submit(key: &str) -> Request<Body> {
        let body = r#"{"algorithmParameters": {"a": 1}}"#;
        Request::post("/algorithm/v1/run/knapsack")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_audit_line_per_write() {
        let key = apikey::generate();
        let (s, _) = scheduler_with_auth(SchedulerConfig::default(), auth(&key));
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(true)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let ok = crate::api::router(s.clone())
            .oneshot(submit(&key))
            .await
            .unwrap();
        assert_eq!(ok.status(), 202);
        let read = crate::api::router(s.clone())
            .oneshot(
                Request::get("/algorithm/v1/results/tags/x")
                    .header("authorization", format!("Bearer {key}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "a listing is filtered, not refused");
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let audit: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("nexus::audit"))
            .collect();
        assert_eq!(audit.len(), 1, "{text}");
        assert!(
            audit[0].contains("API key 'ci'") && audit[0].contains("action=\"submit\""),
            "{}",
            audit[0]
        );
        assert!(audit[0].contains("outcome=\"ok\""), "{}", audit[0]);
    }

    #[test]
    fn moving_a_run_to_another_workgroup_needs_a_grant_naming_it() {
        let key = apikey::generate();
        let (s, _) = scheduler_with_auth(SchedulerConfig::default(), auth(&key));
        let p = Principal {
            subject: "ci".into(),
            groups: vec!["team-a".into()],
            method: nexus_auth::Method::ApiKey,
        };
        let check = submit_check(&s, &Caller::Principal(p)).unwrap();
        let target = |wg| SubmitTarget {
            algorithm: "knapsack",
            template_workgroup: "wg",
            workgroup: wg,
            parent: None,
        };
        assert!((check.0)(&target("wg")).is_ok());
        let e = (check.0)(&target("gpu")).unwrap_err();
        assert!(
            e.contains("may not move runs of algorithm 'knapsack' into workgroup 'gpu'"),
            "{e}"
        );
        assert!(submit_check(&s, &Caller::Anonymous).is_none());
    }
}
