//! `nexus-demo`: demo algorithms for Nexus running in standalone (local-process) mode.
//!
//! One binary, several algorithms chosen by the first argument:
//!
//! * `knapsack` – an exact 0/1 knapsack solver (dynamic programming);
//! * `chaos` – deliberately walks one of the failure paths (bad exit codes,
//!   timeouts, crashes, reported errors, missing completion, flaky retries) so
//!   the scheduler's handling of each one can be observed;
//! * `fanout` – divide and conquer over an execution tree of child runs;
//! * `hostile` – attacks the server and other runs (used by the isolation test only).
//! * `hello` – a hello world written only to the Go Nexus contract (see `hello`).
//!
//! The first three follow the Nexus algorithm-container contract: read the payload from
//! `--sas-uri`, upload the result to `NEXUS__RESULT_UPLOAD_URL`, then report
//! completion to `{NEXUS__RECEIVER_URL}/algorithm/v1/complete/{algorithm}/requests/{id}`.
//! See [`USAGE`] for details.

mod args;
mod chaos;
mod fanout;
mod hello;
mod hostile;
mod knapsack;
mod nexus;

use std::process::ExitCode;

use args::{Algorithm, Command, PayloadSource, RunArgs};
use nexus::{Outcome, RunContext};

/// Printed by `--help`; doubles as documentation of the contract.
pub const USAGE: &str = "\
nexus-demo - demo algorithms for Nexus (standalone / local-process mode)

USAGE:
    nexus-demo <ALGORITHM> --sas-uri=<URL> [--request-id=<ID>]
    nexus-demo <ALGORITHM> --payload-file=<PATH> [--request-id=<ID>]
    nexus-demo --help

ALGORITHMS:
    knapsack   Exact 0/1 knapsack by dynamic programming.
               payload: {\"capacity\": 10, \"items\": [{\"name\": \"a\", \"weight\": 5, \"value\": 10}, ...]}
               result:  {\"totalValue\": 90, \"totalWeight\": 7, \"chosen\": [\"b\", \"d\"]}
               limits:  capacity <= 10000000, items <= 10000 (violations complete the
                        run with errorCause \"invalid input: ...\")
    chaos      Walks a failure path chosen by payload {\"mode\": ...}:
                 exit        {\"mode\": \"exit\", \"code\": 3}        exit with that code, no completion
                 sleep       {\"mode\": \"sleep\", \"seconds\": 30}   sleep (hit deadlineSeconds), then succeed
                 crash       {\"mode\": \"crash\"}                   abort (SIGABRT)
                 error       {\"mode\": \"error\"}                   complete with errorCause
                 no-complete {\"mode\": \"no-complete\"}             exit 0 without completing
                 succeed     {\"mode\": \"succeed\"}                 complete with {\"ok\": true}
                 flaky       {\"mode\": \"flaky\", \"failUntilAttempt\": 3}
                             exit 75 (transient) until attempt 3, then succeed; attempts
                             are counted in the file ./flaky-<request id>
                 memory      {\"mode\": \"memory\", \"megabytes\": 512}
                             allocate and touch that much memory (exceed a memoryLimit:
                             OOM-killed), then succeed

    fanout     Sum of squares by divide and conquer over an execution tree: a list longer
               than `leaf` is split in two halves solved by child runs of the same
               algorithm (created, awaited and read with the nexus-sdk over gRPC), and
               their results are combined.
               payload: {\"numbers\": [1, 2, 3, ...], \"leaf\": 10}
               result:  {\"sumOfSquares\": 14, \"runs\": 7, \"depth\": 2}
               (with --payload-file, or without NEXUS__SCHEDULER_URL, it solves locally)
    hello      Hello world written only to the Go Nexus contract: --sas-uri, --request-id,
               NEXUS__RECEIVER_URL (which carries the run's credential), no header, no upload.
               payload: {\"name\": \"Nexus\"}
               result:  resultUri data:text/plain;charset=utf-8,Hello%2C%20Nexus%21
               (a payload without a string `name` completes with errorCause \"invalid payload: ...\")

    hostile    Tries to read the server's keys, stores and other runs' files and to act as
               another run; its result reports which attempt was refused (the isolation
               test's algorithm; see examples/src/hostile.rs).

CONTRACT (how Nexus runs an algorithm as a local process):
    Template `command` is run with `args`; an arg that is exactly `--sas-uri=%s` receives the
    payload URL and exactly `--request-id=%s` the run id (any arg may also contain
    `{payload_uri}` or `{request_id}`; docs/ALGORITHMS.md). Environment:
        NEXUS__ALGORITHM_NAME      template name (used in the completion URL)
        NEXUS__SHARD_NAME          shard the run belongs to
        NEXUS__REQUEST_ID          run id (fallback for --request-id)
        NEXUS__RUN_TOKEN           run-scoped bearer token for the completion call
        NEXUS__RECEIVER_URL        e.g. http://127.0.0.1:8090
        NEXUS__RESULT_UPLOAD_URL   signed URL; HTTP PUT the result bytes to it
        NEXUS__PARENT_REQUEST_ID   optional parent run id
        NEXUS__SCHEDULER_URL       schedulers' URL, for child runs (nexus-sdk)
    1. GET the --sas-uri: the body is the JSON of the client's `algorithmParameters`.
    2. PUT the result JSON to NEXUS__RESULT_UPLOAD_URL (content-type: application/json).
    3. POST {NEXUS__RECEIVER_URL}/algorithm/v1/complete/{algorithm}/requests/{id}
       with `Authorization: Bearer $NEXUS__RUN_TOKEN` and body
         {\"resultUri\": \"\"}                                            on success, or
         {\"resultUri\": \"\", \"errorCause\": \"...\", \"errorDetails\": \"...\"}    on failure.
    Everything printed to stdout/stderr becomes the run's log.

    With --payload-file the payload is read from a file and the result is printed to
    stdout instead (no Nexus needed).

EXIT CODES:
    0  finished (successfully or with a reported error)
    1  could not talk to Nexus (HTTP failure) or missing environment
    2  bad command line
    other codes only when requested by the chaos algorithm";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&argv) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Run(run)) => execute(run),
        Err(message) => {
            eprintln!("nexus-demo: {message}");
            eprintln!("run `nexus-demo --help` for usage");
            ExitCode::from(2)
        }
    }
}

/// Runs one algorithm end to end: fetch payload, compute, upload, complete.
fn execute(run: RunArgs) -> ExitCode {
    let result = match &run.source {
        PayloadSource::File(path) => execute_local(&run, path),
        PayloadSource::SasUri(uri) => execute_remote(&run, uri),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("[nexus-demo] error: {message}");
            ExitCode::from(1)
        }
    }
}

fn compute(
    algorithm: Algorithm,
    payload: &[u8],
    request_id: &str,
    sas_uri: &str,
    progress: &dyn Fn(f64, &str),
) -> Outcome {
    match algorithm {
        Algorithm::Knapsack => knapsack::run(payload),
        Algorithm::Chaos => chaos::run(payload, request_id, progress),
        Algorithm::Fanout => fanout::run(payload),
        Algorithm::Hostile => hostile::run(payload, &hostile::Own::from_env(request_id, sas_uri)),
        Algorithm::Hello => hello::run(payload),
    }
}

/// Offline mode: payload from a file, result printed to stdout.
fn execute_local(run: &RunArgs, path: &str) -> Result<(), String> {
    let payload =
        std::fs::read(path).map_err(|e| format!("cannot read payload file {path}: {e}"))?;
    let request_id = run.request_id.clone().unwrap_or_else(|| "local".to_owned());
    println!(
        "[nexus-demo] {} (local run {request_id}): payload from {path} ({} bytes)",
        run.algorithm.name(),
        payload.len()
    );
    let progress = |f: f64, m: &str| println!("[nexus-demo] progress {:.0}% {m}", f * 100.0);
    match compute(run.algorithm, &payload, &request_id, "", &progress) {
        Outcome::Success(value) => {
            println!("{value}");
            Ok(())
        }
        Outcome::Failure { cause, details } => Err(format!("algorithm failed: {cause}: {details}")),
    }
}

/// Nexus mode: payload from the signed URL, completion reported to the receiver.
fn execute_remote(run: &RunArgs, sas_uri: &str) -> Result<(), String> {
    if run.algorithm == Algorithm::Hello {
        return hello::execute_remote(sas_uri, run.request_id.as_deref());
    }
    let ctx = RunContext::from_env(run.algorithm.name(), run.request_id.as_deref())?;
    println!(
        "[nexus-demo] {} run {} (shard {}{}) starting",
        ctx.algorithm,
        ctx.request_id,
        ctx.shard.as_deref().unwrap_or("-"),
        ctx.parent_request_id
            .as_deref()
            .map(|p| format!(", parent {p}"))
            .unwrap_or_default()
    );
    let client = nexus::Client::new()?;
    let payload = client.fetch_payload(sas_uri)?;
    println!("[nexus-demo] fetched payload ({} bytes)", payload.len());
    let progress = |f: f64, m: &str| client.report_progress(&ctx, f, m);
    let outcome = compute(run.algorithm, &payload, &ctx.request_id, sas_uri, &progress);
    client.finish(&ctx, &outcome)?;
    match outcome {
        Outcome::Success(_) => {
            println!("[nexus-demo] run {} completed successfully", ctx.request_id)
        }
        Outcome::Failure { cause, .. } => {
            println!(
                "[nexus-demo] run {} completed with error: {cause}",
                ctx.request_id
            )
        }
    }
    Ok(())
}
