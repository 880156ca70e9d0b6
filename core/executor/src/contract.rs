//! Rendering a run into what an executor launches: command, arguments, environment.
//!
//! Argument placeholders are explicit (fix of the reference's substring matching): an argument
//! that is exactly `--sas-uri=%s` or `--request-id=%s` (the reference's conventional forms) is
//! filled in, and `{payload_uri}` / `{request_id}` are replaced anywhere in an argument. Nothing
//! else is touched, so an argument that merely mentions "request-id" stays as written.

use std::time::Duration;

use nexus_proto::v1::env;

use crate::LaunchSpec;
use nexus_model::run::Run;
use nexus_model::spec::WorkgroupSpec;
use nexus_payload::Keys;

/// What the receiver adds to a launch besides the run itself.
#[derive(Debug, Clone)]
pub struct LaunchContext<'a> {
    /// Signed GET URL of the payload.
    pub payload_url: &'a str,
    /// Run-scoped token.
    pub run_token: &'a str,
    /// Receiver base URL the algorithm completes through.
    pub receiver_url: &'a str,
    /// Signed PUT URL for the result.
    pub result_upload_url: &'a str,
    /// Base URL of the schedulers (`NEXUS__SCHEDULER_URL`, for child runs); empty: not set.
    pub scheduler_url: &'a str,
}

/// [`LaunchContext`] with owned values: what a launch carries to its executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// Signed GET URL of the payload.
    pub payload_url: String,
    /// Run-scoped token.
    pub run_token: String,
    /// Receiver base URL the algorithm completes through.
    pub receiver_url: String,
    /// Signed PUT URL for the result.
    pub result_upload_url: String,
    /// Base URL of the schedulers; empty: not set.
    pub scheduler_url: String,
}

impl Contract {
    /// Returns the borrowed view renderers take.
    #[must_use]
    pub fn context(&self) -> LaunchContext<'_> {
        LaunchContext {
            payload_url: &self.payload_url,
            run_token: &self.run_token,
            receiver_url: &self.receiver_url,
            result_upload_url: &self.result_upload_url,
            scheduler_url: &self.scheduler_url,
        }
    }
}

impl From<&LaunchContext<'_>> for Contract {
    fn from(c: &LaunchContext<'_>) -> Self {
        Self {
            payload_url: c.payload_url.to_owned(),
            run_token: c.run_token.to_owned(),
            receiver_url: c.receiver_url.to_owned(),
            result_upload_url: c.result_upload_url.to_owned(),
            scheduler_url: c.scheduler_url.to_owned(),
        }
    }
}

/// What a launch was rendered from ([`LaunchSpec::source`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSource {
    /// The run.
    pub run: Run,
    /// Its workgroup.
    pub workgroup: WorkgroupSpec,
    /// What the receiver hands it.
    pub contract: Contract,
}

/// Returns the message for template environment variables a process executor cannot honour
/// (`valueFrom` needs Kubernetes), if `run` has any.
#[must_use]
pub(crate) fn needs_kubernetes(run: &Run) -> Option<String> {
    let rt = run.applied_configuration.runtime_environment.as_ref()?;
    rt.environment_variables
        .iter()
        .find(|e| e.value_from.is_some())
        .map(|e| {
            format!(
                "environment variable {} uses valueFrom, which needs the Kubernetes executor",
                e.name
            )
        })
}

/// Substitutes the payload URL and run id into the template's arguments.
#[must_use]
pub fn render_args(args: &[String], payload_url: &str, request_id: &str) -> Vec<String> {
    args.iter()
        .map(|a| match a.as_str() {
            "--sas-uri=%s" => format!("--sas-uri={payload_url}"),
            "--request-id=%s" => format!("--request-id={request_id}"),
            _ => a
                .replace("{payload_uri}", payload_url)
                .replace("{request_id}", request_id),
        })
        .collect()
}

/// Splits a template `command` into its words: on single spaces, as the reference does, but
/// without the empty words that repeated spaces would give (`"python3  main.py"` is two words).
/// Shared by the local executor ([`launch_spec`]) and the Kubernetes Job (`nexus_kube::job`).
#[must_use]
pub fn split_command(command: &str) -> Vec<String> {
    command
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The environment variables of the algorithm-container contract that Nexus sets for a run,
/// in this order: the reference's `NEXUS__ALGORITHM_NAME`, `NEXUS__SHARD_NAME` (= `shard`),
/// `NEXUS__PARENT_REQUEST_ID` / `NEXUS__PARENT_ALGORITHM_NAME` (only when the run has a parent),
/// then Nexus' additions `NEXUS__REQUEST_ID`, `NEXUS__RUN_TOKEN`, `NEXUS__RECEIVER_URL`,
/// `NEXUS__RESULT_UPLOAD_URL`, `NEXUS__PAYLOAD_URL`. They come after the template's own
/// variables in both executors. `NEXUS__RECEIVER_URL` carries the run token as a path prefix
/// ([`receiver_url_with_token`]), so completing through it needs no header.
#[must_use]
pub fn contract_env(run: &Run, shard: &str, ctx: &LaunchContext<'_>) -> Vec<(String, String)> {
    let mut envs: Vec<(String, String)> = vec![
        (env::ALGORITHM_NAME.into(), run.algorithm.clone()),
        (env::SHARD_NAME.into(), shard.into()),
    ];
    if let Some(p) = &run.parent {
        envs.push((env::PARENT_REQUEST_ID.into(), p.request_id.to_string()));
        envs.push((env::PARENT_ALGORITHM_NAME.into(), p.algorithm_name.clone()));
    }
    envs.push((env::REQUEST_ID.into(), run.id.to_string()));
    envs.push((env::RUN_TOKEN.into(), ctx.run_token.into()));
    envs.push((
        env::RECEIVER_URL.into(),
        receiver_url_with_token(ctx.receiver_url, ctx.run_token),
    ));
    envs.push((env::RESULT_UPLOAD_URL.into(), ctx.result_upload_url.into()));
    envs.push((env::PAYLOAD_URL.into(), ctx.payload_url.into()));
    if !ctx.scheduler_url.is_empty() {
        envs.push((env::SCHEDULER_URL.into(), ctx.scheduler_url.into()));
    }
    envs
}

/// Path segment under which a receiver URL carries a run token: the algorithm is handed
/// `NEXUS__RECEIVER_URL = <receiver>/run-token/<token>`, so that an algorithm written for the Go
/// contract, which calls `POST $NEXUS__RECEIVER_URL/algorithm/v1/complete/...` without an
/// `Authorization` header, presents its run token without knowing it.
pub(crate) const RUN_TOKEN_PATH: &str = "run-token";

/// Returns the receiver URL handed to a run: `receiver_url` with the run token as a path prefix
/// ([`RUN_TOKEN_PATH`]); `receiver_url` as it is when there is no token. Run tokens are
/// `v1.<expiry>.<base64url>`, safe in a path segment as they are.
#[must_use]
pub fn receiver_url_with_token(receiver_url: &str, run_token: &str) -> String {
    let base = receiver_url.trim_end_matches('/');
    if run_token.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{RUN_TOKEN_PATH}/{run_token}")
    }
}

/// Renders the launch of `run` for any executor: the process view (command, arguments,
/// environment of plain values) and its [`LaunchSource`]. Variables with `valueFrom` are left out
/// of the process view (a process executor refuses them, [`needs_kubernetes`]).
///
/// # Errors
/// Returns a message when the template's command is empty.
pub fn launch_spec(
    run: &Run,
    workgroup: &WorkgroupSpec,
    ctx: &LaunchContext<'_>,
) -> Result<LaunchSpec, String> {
    let spec = &run.applied_configuration;
    let id = run.id.to_string();
    let mut parts = split_command(&spec.command).into_iter();
    let command = parts
        .next()
        .ok_or_else(|| "spec.command is empty".to_owned())?;
    let mut args: Vec<String> = parts.collect();
    args.extend(render_args(&spec.args, ctx.payload_url, &id));
    let mut envs: Vec<(String, String)> = Vec::new();
    if let Some(rt) = &spec.runtime_environment {
        for e in &rt.environment_variables {
            if e.value_from.is_some() {
                continue;
            }
            envs.push((e.name.clone(), e.value.clone().unwrap_or_default()));
        }
    }
    envs.extend(contract_env(run, &run.shard, ctx));
    let eh = spec.error_handling_behaviour.clone().unwrap_or_default();
    Ok(LaunchSpec {
        run_id: run.id,
        algorithm: run.algorithm.clone(),
        workgroup: run.workgroup.clone(),
        max_concurrent: workgroup.max_concurrent_runs,
        command,
        args,
        env: envs,
        deadline: Duration::from_secs(u64::from(spec.deadline_seconds())),
        max_retries: spec.maximum_retries(),
        prior_attempts: run.attempts,
        transient_exit_codes: eh.transient_exit_codes,
        fatal_exit_codes: eh.fatal_exit_codes,
        logs_key: Some(Keys::logs(&run.algorithm, &id)),
        source: Some(Box::new(LaunchSource {
            run: run.clone(),
            workgroup: workgroup.clone(),
            contract: Contract::from(ctx),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_explicit() {
        let args: Vec<String> = [
            "main.py",
            "--sas-uri=%s",
            "--request-id=%s",
            "--note=request-id",
            "in={payload_uri}&id={request_id}",
        ]
        .map(String::from)
        .to_vec();
        let r = render_args(&args, "http://u", "42");
        assert_eq!(
            r,
            [
                "main.py",
                "--sas-uri=http://u",
                "--request-id=42",
                "--note=request-id",
                "in=http://u&id=42"
            ]
        );
    }

    #[test]
    fn the_receiver_url_carries_the_run_token() {
        assert_eq!(
            receiver_url_with_token("http://r:8090/", "v1.17.abc_-"),
            "http://r:8090/run-token/v1.17.abc_-"
        );
        assert_eq!(
            receiver_url_with_token("http://r:8090/", ""),
            "http://r:8090"
        );
    }
}
