//! Client commands of the `nexus` binary: `nexus run submit|get|wait|cancel|list|explain|logs|result`.
//!
//! They talk to a running Nexus (standalone or receiver/scheduler deployment) over the
//! v1 HTTP API (`/algorithm/v1/...`), which is wire-compatible with the Go Nexus.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::http::{Method, StatusCode};
use nexus_http::client::{Answer, ClientError, HttpClient};
use nexus_proto::v1::{
    AlgorithmRequest, CancellationRequest, RequestResult, RunCreated, RunExplanation, RunPage,
    RunSummary,
};
use url::Url;

/// Stages after which a run never changes again.
pub const TERMINAL_STATUSES: [&str; 5] = [
    "COMPLETED",
    "FAILED",
    "SCHEDULING_FAILED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
];

/// Exit code of `wait` when the run completed.
pub const EXIT_COMPLETED: u8 = 0;
/// Exit code of `wait` when the run ended in any other terminal stage.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of `wait` when `--timeout` elapsed before the run finished.
pub const EXIT_TIMEOUT: u8 = 2;

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const ERROR_COLUMN_WIDTH: usize = 60;

/// Where the Nexus server is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Base URL of the Nexus HTTP API (`http://` or `https://`).
    #[arg(
        long,
        env = "NEXUS_SERVER",
        default_value = "http://127.0.0.1:8090",
        global = true
    )]
    pub server: String,
    /// Bearer token sent as `Authorization: Bearer <TOKEN>` (when the server requires auth).
    #[arg(long, env = "NEXUS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of CA certificates trusted for an `https://` server, besides the system's (a
    /// private CA).
    #[arg(long, env = "NEXUS_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// How the cluster deletes the run's workload when it is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CancelPolicy {
    /// Delete the workload; its pods are removed in the background (default).
    #[value(name = "Background")]
    Background,
    /// Delete the workload after its pods are gone.
    #[value(name = "Foreground")]
    Foreground,
    /// Delete the workload and leave its pods running.
    #[value(name = "Orphan")]
    Orphan,
}

impl CancelPolicy {
    /// The wire name (`cancellationPolicy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Background => "Background",
            Self::Foreground => "Foreground",
            Self::Orphan => "Orphan",
        }
    }
}

/// Submit, inspect, wait for, cancel and list runs on a Nexus server.
#[derive(Debug, clap::Subcommand)]
pub enum RunCommand {
    /// Submit a run of an algorithm and print its request id.
    ///
    /// The parameters (the algorithm's payload) are read from a JSON file, or from
    /// stdin with `--params -`. Only the request id is printed on stdout, so the
    /// command composes well in scripts; with `--wait` it then waits like `nexus run wait`
    /// (and exits with the same codes).
    #[command(after_help = "Examples:\n  \
        nexus run submit knapsack --params examples/payloads/knapsack.json --wait\n  \
        ID=$(nexus run submit knapsack --params payload.json --tag nightly)\n  \
        echo '{\"items\": []}' | nexus run submit knapsack --params - --idempotency-key job-42")]
    Submit {
        /// Name of the algorithm (its template) to run.
        algorithm: String,
        /// JSON file with the algorithm parameters, or `-` to read them from stdin.
        #[arg(long, short = 'p', value_name = "FILE|-")]
        params: PathBuf,
        /// Client tag stored with the run; find tagged runs with `nexus run list --tag`.
        #[arg(long)]
        tag: Option<String>,
        /// Submitting again with the same key returns the existing run instead of a new one.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// How long the payload URL handed to the algorithm stays valid (e.g. `6h`, `90m`).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        payload_valid_for: Option<Duration>,
        /// JSON file with per-run overrides of the template spec (`customConfiguration`).
        #[arg(long = "override", value_name = "FILE")]
        custom_configuration: Option<PathBuf>,
        /// After submitting, wait for the run to finish (exit 0 completed, 1 failed, 2 timeout).
        #[arg(long)]
        wait: bool,
        /// With `--wait`: give up waiting after this long (e.g. `30s`, `10m`, `1h`).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
        /// With `--wait`: how often the status line refreshes (each status read is held by the
        /// server until the run ends or this long passes, so the end shows at once).
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration, requires = "wait")]
        interval: Duration,
    },
    /// Show the status and result (or error) of a run.
    ///
    /// Prints the stage, the result URI when the run completed and the error message when
    /// it failed. `--json` prints the raw `RequestResult` answer; `--metadata` prints the
    /// full run record, Go's `CheckpointedRequest` (lifecycle_stage, received_at,
    /// algorithm_failure_cause, algorithm_failure_details, attempts, logs_uri, ...).
    #[command(after_help = "Examples:\n  \
        nexus run get knapsack 2f1c0a9e-6b1d-4f5e-9d51-0c8a3e7f4b21\n  \
        nexus run get knapsack $ID --json | jq -r .resultUri\n  \
        nexus run get knapsack $ID --metadata")]
    Get {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Print the raw `RequestResult` JSON instead of a human summary.
        #[arg(long, conflicts_with = "metadata")]
        json: bool,
        /// Print the full run record (metadata) as JSON.
        #[arg(long)]
        metadata: bool,
    },
    /// Wait until a run reaches a terminal stage.
    ///
    /// Polls the run's status; progress goes to stderr (a live line on a terminal, one
    /// line per stage change otherwise). The final status and result URI / error go to
    /// stdout. Exit code: 0 when COMPLETED, 1 for any other terminal stage (FAILED,
    /// SCHEDULING_FAILED, DEADLINE_EXCEEDED, CANCELLED), 2 when `--timeout` elapsed first.
    #[command(after_help = "Examples:\n  \
        nexus run wait knapsack $ID\n  \
        nexus run wait knapsack $ID --timeout 1h --interval 5s && echo done")]
    Wait {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Give up waiting after this long (e.g. `30s`, `10m`, `1h`); the run keeps going.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// How often the status line refreshes (each status read is held by the server until the
        /// run ends or this long passes, so the end shows at once).
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Cancel a run that has not finished yet.
    ///
    /// Fails (with the server's message) when the run already reached a terminal stage.
    #[command(after_help = "Examples:\n  \
        nexus run cancel knapsack $ID --reason \"wrong input\"\n  \
        nexus run cancel knapsack $ID --policy Foreground --initiator ci-bot")]
    Cancel {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Why the run is cancelled (stored with the run).
        #[arg(long, default_value = "cancelled from nexus-cli")]
        reason: String,
        /// Who cancels the run [default: $USER, else "nexus-cli"].
        #[arg(long)]
        initiator: Option<String>,
        /// How the run's workload is deleted.
        #[arg(long, value_enum, ignore_case = true)]
        policy: Option<CancelPolicy>,
    },
    /// Explain what a run is doing and, while it waits, why.
    ///
    /// Prints the run's stage and since when, one sentence on what it is doing (its place in
    /// its shard's queue on the scheduler that answered, or that it was handed to its shard
    /// and waits there for a launch slot), the facts that bear on it (the shard's lane paused
    /// because the shard did not answer, the dispatch rate slowed down after the shard said
    /// "slow down", the dispatch budget, the workgroup's concurrency limit), what its shard's
    /// receivers say (their launch limiter; the run waiting for a workgroup slot or its process
    /// running; on Kubernetes its Job's and pods' conditions, e.g. Unschedulable or
    /// ImagePullBackOff), then its timeline: every stage change with its time, the component
    /// that made it and the cause. `--json` prints the server's answer.
    #[command(after_help = "Examples:\n  \
        nexus run explain knapsack $ID\n  \
        nexus run explain knapsack $ID --json | jq .timeline")]
    Explain {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's captured output (stdout and stderr); `-f` follows it while it runs.
    ///
    /// A local process's output (standalone and local receivers) is published every few
    /// seconds while the run runs and kept with the run afterwards. A Kubernetes run's output is
    /// read from its pod while the pod exists, and a copy is kept with the run once its Job
    /// finished. With `--follow`, new output is printed as it comes until the run finished (like
    /// `tail -f`); Ctrl-C stops following, not the run.
    #[command(after_help = "Examples:\n  \
        nexus run logs knapsack $ID\n  \
        nexus run logs knapsack $ID -f\n  \
        nexus run logs knapsack $ID > run.log")]
    Logs {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Keep printing new output until the run finished.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print a completed run's result, or save it to a file.
    ///
    /// Downloads the result through its signed URL (results of up to 64 MiB) and writes it
    /// to stdout, or to `--output`. A run that has not completed is an error saying what it is
    /// doing (exit 1); wait for it first with `nexus run wait`.
    #[command(after_help = "Examples:\n  \
        nexus run result knapsack $ID | jq .\n  \
        nexus run result knapsack $ID --output result.json\n  \
        nexus run wait knapsack $ID && nexus run result knapsack $ID -o out.json")]
    Result {
        /// Name of the algorithm the run belongs to.
        algorithm: String,
        /// Request id printed by `nexus run submit`.
        id: String,
        /// Write the result to this file instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List runs, newest first, filtered by algorithm, stage, tag, time, tree and shard.
    ///
    /// Every filter given must match. Prints a table (id, algorithm, status, submitted,
    /// result URI or error) of one page; when more runs match, stderr says how to get the next
    /// page (`--cursor`), or `--all` follows every page. `--json` prints the runs as a JSON
    /// array (the cursor still goes to stderr). Only runs you may read are listed.
    #[command(after_help = "Examples:\n  \
        nexus run list                                   # the 50 newest runs\n  \
        nexus run list --tag nightly --json | jq '.[] | select(.status == \"FAILED\")'\n  \
        nexus run list --algorithm knapsack --stage FAILED --since 24h\n  \
        nexus run list --root $ID --all                   # a whole execution tree\n  \
        nexus run list --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z --json\n  \
        nexus run list --stage RUNNING --shard gpu --limit 200 --cursor <from the last page>")]
    List {
        /// Runs submitted with this tag (`nexus run submit --tag`).
        #[arg(long)]
        tag: Option<String>,
        /// Runs of this algorithm.
        #[arg(long, short = 'a')]
        algorithm: Option<String>,
        /// Runs now in this stage (NEW, BUFFERED, RUNNING, COMPLETED, FAILED,
        /// SCHEDULING_FAILED, DEADLINE_EXCEEDED, CANCELLED; any case).
        #[arg(long)]
        stage: Option<String>,
        /// Submitted at or after: a time (RFC 3339, e.g. 2026-12-01T00:00:00Z) or how long ago
        /// (e.g. 90m, 24h, 7d).
        #[arg(long, value_name = "TIME|AGO")]
        since: Option<String>,
        /// Submitted before: a time or how long ago, as `--since`.
        #[arg(long, value_name = "TIME|AGO")]
        until: Option<String>,
        /// Direct children of this run (request id).
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Every run of this execution tree, its root included (the root's request id).
        #[arg(long, value_name = "ID")]
        root: Option<String>,
        /// Runs sent to this shard (cluster).
        #[arg(long)]
        shard: Option<String>,
        /// Runs per page (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Continue after a previous page (the cursor printed with it).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Follow every page to the end.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one client command against the server described by `opts`.
pub async fn run(opts: &ClientOpts, cmd: RunCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(opts)?;
    match cmd {
        RunCommand::Submit {
            algorithm,
            params,
            tag,
            idempotency_key,
            payload_valid_for,
            custom_configuration,
            wait,
            timeout,
            interval,
        } => {
            let parameters = read_json_source(&params, "parameters")?;
            let custom_configuration = custom_configuration
                .as_deref()
                .map(|p| read_json_source(p, "override"))
                .transpose()?;
            let request = AlgorithmRequest {
                algorithm_parameters: Some(
                    serde_json::value::to_raw_value(&parameters)
                        .context("encoding the parameters")?,
                ),
                custom_configuration,
                tag,
                payload_valid_for: payload_valid_for.map(go_duration),
                ..AlgorithmRequest::default()
            };
            let created = client
                .submit(&algorithm, &request, idempotency_key.as_deref())
                .await?;
            println!("{}", created.request_id);
            flush_stdout();
            if wait {
                client
                    .wait(&algorithm, &created.request_id, timeout, interval)
                    .await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        RunCommand::Get {
            algorithm,
            id,
            json,
            metadata,
        } => {
            if metadata {
                let value = client.metadata(&algorithm, &id).await?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let result = client.result(&algorithm, &id).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&result)?);
                } else {
                    // Best effort: a caller who may read the answer but not the metadata still
                    // gets the answer.
                    let meta = client.metadata(&algorithm, &id).await.ok();
                    print!("{}", format_result(&result, meta.as_ref()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Wait {
            algorithm,
            id,
            timeout,
            interval,
        } => client.wait(&algorithm, &id, timeout, interval).await,
        RunCommand::Cancel {
            algorithm,
            id,
            reason,
            initiator,
            policy,
        } => {
            let request = CancellationRequest {
                reason,
                initiator: initiator.unwrap_or_else(default_initiator),
                cancellation_policy: policy.map(|p| p.as_str().to_owned()),
            };
            let said = client.cancel(&algorithm, &id, &request).await?;
            // The server says what happened (cancelled, or already finished and left as it is).
            if said.is_empty() {
                println!("cancellation of run {id} ({algorithm}) requested");
            } else {
                println!("{said}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Explain {
            algorithm,
            id,
            json,
        } => {
            let e = client.explain(&algorithm, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", format_explanation(&e));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Logs {
            algorithm,
            id,
            follow,
        } => {
            client.logs(&algorithm, &id, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Result {
            algorithm,
            id,
            output,
        } => {
            let bytes = client.download_result(&algorithm, &id).await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("writing the result to {}", path.display()))?;
                    eprintln!(
                        "saved the result of run {id} ({} bytes) to {}",
                        bytes.len(),
                        path.display()
                    );
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)
                        .context("writing the result to stdout")?;
                    out.flush().context("writing the result to stdout")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::List {
            tag,
            algorithm,
            stage,
            since,
            until,
            parent,
            root,
            shard,
            limit,
            cursor,
            all,
            json,
        } => {
            let now = std::time::SystemTime::now();
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            let mut put = |k: &'static str, v: Option<String>| {
                if let Some(v) = v {
                    query.push((k, v));
                }
            };
            put("tag", tag);
            put("algorithm", algorithm);
            put("stage", stage.map(|s| s.to_ascii_uppercase()));
            put(
                "from",
                since.map(|t| time_arg("--since", &t, now)).transpose()?,
            );
            put(
                "to",
                until.map(|t| time_arg("--until", &t, now)).transpose()?,
            );
            put("parent", parent);
            put("root", root);
            put("shard", shard);
            let mut cursor = cursor;
            let mut every = Vec::new();
            loop {
                let mut q = query.clone();
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                let page = client.list(&q).await?;
                cursor = page.next_cursor.clone();
                if !all {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&page.runs)?);
                    } else if page.runs.is_empty() && cursor.is_none() {
                        eprintln!("no runs match");
                    } else {
                        print!("{}", format_summaries(&page.runs));
                    }
                    if let Some(c) = &cursor {
                        eprintln!(
                            "more runs may match: add --cursor {c} for the next page, or --all"
                        );
                    }
                    break;
                }
                every.extend(page.runs);
                if cursor.is_none() {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&every)?);
                    } else if every.is_empty() {
                        eprintln!("no runs match");
                    } else {
                        print!("{}", format_summaries(&every));
                    }
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A `--since`/`--until` value for the server: RFC 3339 as given, or a duration ago.
fn time_arg(flag: &str, v: &str, now: std::time::SystemTime) -> anyhow::Result<String> {
    if humantime::parse_rfc3339_weak(v).is_ok() {
        return Ok(v.to_owned());
    }
    let ago = humantime::parse_duration(v).map_err(|_| {
        anyhow!(
            "{flag} {v:?}: give a time (RFC 3339, e.g. 2026-12-01T00:00:00Z) or how long ago (e.g. 90m, 24h, 7d)"
        )
    })?;
    let t = now
        .checked_sub(ago)
        .ok_or_else(|| anyhow!("{flag} {v:?}: that is before 1970"))?;
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

/// The listing table: id, algorithm, status, submitted, result or error.
fn format_summaries(runs: &[RunSummary]) -> String {
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            let took = r
                .finished_at
                .as_deref()
                .and_then(|f| span(&r.submitted_at, f))
                .map_or_else(|| "-".to_owned(), format_elapsed);
            [
                r.request_id.clone(),
                r.algorithm_name.clone(),
                r.status.clone(),
                short_time(&r.submitted_at),
                took,
                one_line(&r.run_error_message, ERROR_COLUMN_WIDTH),
            ]
        })
        .collect();
    format_rows(
        ["ID", "ALGORITHM", "STATUS", "SUBMITTED", "TOOK", "ERROR"],
        &rows,
    )
}

/// The time from `from` to `to` (RFC 3339), when both parse and `to` is not earlier.
fn span(from: &str, to: &str) -> Option<Duration> {
    let from = humantime::parse_rfc3339_weak(from).ok()?;
    let to = humantime::parse_rfc3339_weak(to).ok()?;
    to.duration_since(from).ok()
}

/// The human form of an explanation: stage, summary, facts, timeline.
fn format_explanation(e: &RunExplanation) -> String {
    let mut out = String::new();
    let since = e
        .since
        .as_deref()
        .map(|t| format!(" since {}", short_time(t)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "run {} ({}): {}{since}",
        e.request_id, e.algorithm_name, e.status
    );
    let _ = writeln!(out, "  {}", e.summary);
    if !e.reasons.is_empty() {
        let _ = writeln!(out, "why:");
        for r in &e.reasons {
            let _ = writeln!(out, "  - {}", r.replace(['\n', '\r'], " "));
        }
    }
    if !e.shard_facts.is_empty() {
        let _ = writeln!(out, "on shard:");
        for f in &e.shard_facts {
            let _ = writeln!(out, "  - {}", f.replace(['\n', '\r'], " "));
        }
    }
    if !e.timeline.is_empty() {
        let _ = writeln!(out, "timeline:");
        let rows: Vec<[String; 4]> = e
            .timeline
            .iter()
            .map(|t| {
                [
                    short_time(&t.at),
                    format!("{} -> {}", t.from, t.to),
                    t.by.clone(),
                    truncate(&t.cause.replace(['\n', '\r', '\t'], " "), 100),
                ]
            })
            .collect();
        for line in format_rows(["AT", "CHANGE", "BY", "CAUSE"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// `2026-12-07T06:13:29.123Z` → `2026-12-07 06:13:29`.
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replacen('T', " ", 1)
}

/// A thin HTTP client of the v1 API.
#[derive(Debug)]
struct Client {
    http: HttpClient,
    base: Url,
    token: Option<String>,
}

/// Largest answer the CLI reads (a listing of 10,000 runs fits many times).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    fn new(opts: &ClientOpts) -> anyhow::Result<Self> {
        let base = parse_server_url(&opts.server)?;
        let http = HttpClient::new(
            opts.ca_file.as_deref(),
            Duration::from_secs(60),
            MAX_ANSWER_BYTES,
            concat!("nexus-cli/", env!("CARGO_PKG_VERSION")),
        )
        .with_context(|| match &opts.ca_file {
            Some(f) => format!("--ca-file {}", f.display()),
            None => "cannot build the HTTPS client".to_owned(),
        })?;
        Ok(Self {
            http,
            base,
            token: opts.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// Sends a request and returns the successful response, or an actionable error.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl serde::Serialize>,
        headers: &[(&str, &str)],
        what: &str,
    ) -> anyhow::Result<Answer> {
        let url = endpoint(&self.base, segments)?;
        self.send_to(method, url, body, headers, what).await
    }

    /// As [`Client::send`], to a full URL (with a query).
    async fn send_to(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl serde::Serialize>,
        headers: &[(&str, &str)],
        what: &str,
    ) -> anyhow::Result<Answer> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("authorization", a.as_str()));
        }
        let body = match body {
            Some(b) => Some((
                bytes::Bytes::from(serde_json::to_vec(b).context("cannot encode the request")?),
                "application/json",
            )),
            None => None,
        };
        let resp = self
            .http
            .send(method, url.as_str(), &all, body)
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status;
        if status.is_success() {
            return Ok(resp);
        }
        let message = resp.text();
        Err(http_error(
            status,
            message.trim(),
            what,
            self.token.is_some(),
        ))
    }

    fn transport_error(&self, e: ClientError) -> anyhow::Error {
        let server = self.base.as_str().trim_end_matches('/');
        if matches!(e, ClientError::Connect(_)) {
            anyhow!(e).context(format!(
                "cannot reach Nexus at {server} — is `nexus standalone` running? \
                 (set --server or NEXUS_SERVER to point elsewhere; for https, --ca-file or NEXUS_CA_FILE trusts a private CA)"
            ))
        } else if matches!(e, ClientError::Timeout(_)) {
            anyhow!(e).context(format!("Nexus at {server} did not answer in time"))
        } else {
            anyhow!(e).context(format!("request to Nexus at {server} failed"))
        }
    }

    async fn submit(
        &self,
        algorithm: &str,
        request: &AlgorithmRequest,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<RunCreated> {
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("Idempotency-Key", k)])
            .unwrap_or_default();
        let what = format!("submitting a run of algorithm {algorithm:?}");
        let resp = self
            .send(
                Method::POST,
                &["algorithm", "v1", "run", algorithm],
                Some(request),
                &headers,
                &what,
            )
            .await?;
        resp.json::<RunCreated>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    async fn result(&self, algorithm: &str, id: &str) -> anyhow::Result<RequestResult> {
        let what = format!("fetching run {id} of algorithm {algorithm:?}");
        let resp = self
            .send(
                Method::GET,
                &["algorithm", "v1", "results", algorithm, "requests", id],
                None::<&()>,
                &[],
                &what,
            )
            .await?;
        resp.json::<RequestResult>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    /// [`Client::result`] that the server holds until the run ends or `wait` is over
    /// (`?wait=`), so an end is seen at once without polling.
    async fn result_within(
        &self,
        algorithm: &str,
        id: &str,
        wait: Duration,
    ) -> anyhow::Result<RequestResult> {
        let what = format!("fetching run {id} of algorithm {algorithm:?}");
        let mut url = endpoint(
            &self.base,
            &["algorithm", "v1", "results", algorithm, "requests", id],
        )?;
        url.query_pairs_mut()
            .append_pair("wait", &format!("{}ms", wait.as_millis().max(1)));
        let resp = self
            .send_to(Method::GET, url, None::<&()>, &[], &what)
            .await?;
        resp.json::<RequestResult>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    async fn metadata(&self, algorithm: &str, id: &str) -> anyhow::Result<serde_json::Value> {
        let what = format!("fetching metadata of run {id} of algorithm {algorithm:?}");
        let resp = self
            .send(
                Method::GET,
                &["algorithm", "v1", "metadata", algorithm, "requests", id],
                None::<&()>,
                &[],
                &what,
            )
            .await?;
        resp.json::<serde_json::Value>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    async fn explain(&self, algorithm: &str, id: &str) -> anyhow::Result<RunExplanation> {
        let what = format!("explaining run {id} of algorithm {algorithm:?}");
        let resp = self
            .send(
                Method::GET,
                &["algorithm", "v1", "explain", algorithm, "requests", id],
                None::<&()>,
                &[],
                &what,
            )
            .await?;
        resp.json::<RunExplanation>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    /// Prints the run's output to stdout (as it comes, with `follow`).
    async fn logs(&self, algorithm: &str, id: &str, follow: bool) -> anyhow::Result<()> {
        let what = format!("reading the output of run {id} of algorithm {algorithm:?}");
        let mut url = endpoint(
            &self.base,
            &["algorithm", "v1", "logs", algorithm, "requests", id],
        )?;
        if follow {
            url.query_pairs_mut().append_pair("follow", "true");
        }
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let mut out = std::io::stdout().lock();
        let answer = self
            .http
            .stream(url.as_str(), &headers, |chunk| {
                out.write_all(chunk)?;
                out.flush()
            })
            .await
            .map_err(|e| self.transport_error(e))?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(http_error(
            answer.status,
            answer.text().trim(),
            &what,
            self.token.is_some(),
        ))
    }

    /// The result of a COMPLETED run, downloaded through its URL.
    async fn download_result(&self, algorithm: &str, id: &str) -> anyhow::Result<bytes::Bytes> {
        let r = self.result(algorithm, id).await?;
        if r.status != "COMPLETED" {
            if is_terminal(&r.status) {
                bail!(
                    "run {id} ended {} and has no result: {}",
                    r.status,
                    if r.run_error_message.is_empty() {
                        "no cause recorded"
                    } else {
                        &r.run_error_message
                    }
                );
            }
            bail!(
                "run {id} is {} and has no result yet: wait for it with `nexus run wait {algorithm} {id}`, see why it waits with `nexus run explain {algorithm} {id}`",
                r.status
            );
        }
        if r.result_uri.is_empty() {
            bail!("run {id} completed without a result (its algorithm reported none)");
        }
        let uri = Url::parse(&r.result_uri)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        let Some(uri) = uri else {
            bail!(
                "run {id} completed; its algorithm reported its result at {}, which is not an HTTP URL: fetch it with the tool of that store",
                r.result_uri
            );
        };
        // The signed URL is the credential: no Authorization header (S3 refuses requests that
        // carry both).
        let answer = self
            .http
            .get_following(uri.as_str(), &[])
            .await
            .map_err(|e| self.transport_error(e))
            .context("downloading the result")?;
        if !answer.status.is_success() {
            bail!(
                "downloading the result of run {id} failed: HTTP {} {}",
                answer.status,
                answer.text().trim()
            );
        }
        Ok(answer.body)
    }

    async fn list(&self, query: &[(&str, String)]) -> anyhow::Result<RunPage> {
        let what = "listing runs";
        let mut url = endpoint(&self.base, &["algorithm", "v1", "runs"])?;
        url.query_pairs_mut().extend_pairs(query);
        let resp = self
            .send_to(Method::GET, url, None::<&()>, &[], what)
            .await?;
        resp.json::<RunPage>()
            .with_context(|| format!("unexpected answer when {what}"))
    }

    async fn cancel(
        &self,
        algorithm: &str,
        id: &str,
        request: &CancellationRequest,
    ) -> anyhow::Result<String> {
        let what = format!("cancelling run {id} of algorithm {algorithm:?}");
        let resp = self
            .send(
                Method::POST,
                &["algorithm", "v1", "cancel", algorithm, "requests", id],
                Some(request),
                &[],
                &what,
            )
            .await?;
        Ok(resp.text().trim().to_owned())
    }

    /// Waits until the run is terminal or `timeout` elapses; returns the exit code. Each status
    /// read is held by the server for up to `interval` (`?wait=`): the end is seen the moment
    /// it happens, and the progress line still refreshes every `interval`.
    async fn wait(
        &self,
        algorithm: &str,
        id: &str,
        timeout: Duration,
        interval: Duration,
    ) -> anyhow::Result<ExitCode> {
        let interval = interval.max(Duration::from_millis(50));
        let start = Instant::now();
        let live = std::io::stderr().is_terminal();
        let mut progress = Progress::new(live);
        let mut detail: Option<String> = None;
        let mut last_meta = start.checked_sub(Duration::from_secs(2)).unwrap_or(start);
        let last_status = loop {
            let asked = Instant::now();
            // The server holds a read for at most 60 s.
            let hold = interval
                .min(Duration::from_secs(50))
                .min(timeout.saturating_sub(start.elapsed()));
            let read = if hold.is_zero() {
                self.result(algorithm, id).await
            } else {
                self.result_within(algorithm, id, hold).await
            };
            let result = match read {
                Ok(r) => r,
                Err(e) => {
                    progress.finish();
                    return Err(e);
                }
            };
            let elapsed = start.elapsed();
            if let Some(code) = exit_code_for_status(&result.status) {
                progress.finish();
                // Best effort: the run's own times, and for a failure the details and the
                // captured output, which usually say what to do.
                let meta = self.metadata(algorithm, id).await.ok();
                print!("{}", format_final(&result, meta.as_ref(), elapsed));
                flush_stdout();
                return Ok(ExitCode::from(code));
            }
            // A running run's reported progress, read at most every 2 s (terminals only).
            if live && result.status == "RUNNING" && last_meta.elapsed() >= Duration::from_secs(2) {
                last_meta = Instant::now();
                detail = self
                    .metadata(algorithm, id)
                    .await
                    .ok()
                    .and_then(|m| format_progress(&m));
            }
            progress.update(id, &result.status, detail.as_deref(), elapsed);
            if elapsed >= timeout {
                break result.status;
            }
            // A server that answered before `interval` without an end (one that does not
            // hold reads, or one shutting down) is asked again only after the interval.
            let remaining = timeout.saturating_sub(start.elapsed());
            tokio::time::sleep(interval.saturating_sub(asked.elapsed()).min(remaining)).await;
        };
        progress.finish();
        eprintln!("{}", timeout_message(algorithm, id, &last_status, timeout));
        Ok(ExitCode::from(EXIT_TIMEOUT))
    }
}

/// Live progress of `wait` on stderr.
#[derive(Debug)]
struct Progress {
    live: bool,
    tick: usize,
    last_status: Option<String>,
    drawn: bool,
}

impl Progress {
    fn new(live: bool) -> Self {
        Self {
            live,
            tick: 0,
            last_status: None,
            drawn: false,
        }
    }

    /// Draws the run's state; `detail` (its reported progress) shows on a terminal only.
    fn update(&mut self, id: &str, status: &str, detail: Option<&str>, elapsed: Duration) {
        let mut err = std::io::stderr().lock();
        if self.live {
            let shown = match detail {
                Some(d) => format!("{status} {d}"),
                None => status.to_owned(),
            };
            let line = progress_line(self.tick, id, &shown, elapsed);
            self.tick = self.tick.wrapping_add(1);
            // \x1b[2K clears the line, so a shorter status leaves no residue.
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_status.as_deref() != Some(status) {
            let _ = writeln!(err, "{id} {status} ({})", format_elapsed(elapsed));
        }
        self.last_status = Some(status.to_owned());
    }

    fn finish(&mut self) {
        if self.live && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// The default `initiator` of a cancellation: `$USER`, else `nexus-cli`.
fn default_initiator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "nexus-cli".to_owned())
}

/// Parses and checks `--server`.
fn parse_server_url(server: &str) -> anyhow::Result<Url> {
    let url = Url::parse(server).with_context(|| {
        format!(
            "invalid --server / NEXUS_SERVER {server:?}: expected a URL like http://127.0.0.1:8090"
        )
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            bail!("--server {server}: unsupported scheme {other:?}, expected http:// or https://")
        }
    }
    if url.cannot_be_a_base() {
        bail!("invalid --server {server:?}: expected a URL like http://127.0.0.1:8090");
    }
    Ok(url)
}

/// `base` + percent-encoded path segments (an algorithm name or id can never escape its segment).
fn endpoint(base: &Url, segments: &[&str]) -> anyhow::Result<Url> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| anyhow!("server URL {base} cannot carry a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Turns a non-2xx answer into an error a person can act on.
fn http_error(status: StatusCode, message: &str, what: &str, has_token: bool) -> anyhow::Error {
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        message.to_owned()
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !has_token => {
            " (the server requires a token: pass --token or set NEXUS_TOKEN)"
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            " (check the token given by --token / NEXUS_TOKEN)"
        }
        StatusCode::NOT_FOUND => " (check the algorithm name and the request id)",
        StatusCode::CONFLICT => " (the run changed meanwhile; check it with `nexus run get`)",
        _ => "",
    };
    anyhow!(
        "{what}: server answered {} {}: {message}{hint}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// Reads a JSON document from a file, or from stdin when `path` is `-`.
fn read_json_source(path: &Path, kind: &str) -> anyhow::Result<serde_json::Value> {
    let (name, text) = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read the {kind} from stdin"))?;
        ("<stdin>".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {kind} file {}", path.display()))?;
        (path.display().to_string(), text)
    };
    parse_json(&name, kind, &text)
}

/// Parses `text` as JSON; the error names the source and the position.
fn parse_json(source: &str, kind: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    if text.trim().is_empty() {
        bail!("the {kind} in {source} are empty: expected a JSON document");
    }
    serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "the {kind} in {source} are not valid JSON: line {}, column {}: {}",
            e.line(),
            e.column(),
            json_error_reason(&e)
        )
    })
}

/// serde_json's message without its trailing " at line L column C".
fn json_error_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

/// Formats a duration the way Go's `time.ParseDuration` reads it (`6h`, `1h30m`, `1.5s`).
fn go_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".to_owned();
    }
    let h = total_ms / 3_600_000;
    let m = (total_ms / 60_000) % 60;
    let s = (total_ms / 1_000) % 60;
    let ms = total_ms % 1_000;
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 {
        let _ = write!(out, "{s}s");
    }
    if ms > 0 {
        let _ = write!(out, "{ms}ms");
    }
    out
}

/// Whether a status is terminal.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL_STATUSES.contains(&status)
}

/// The exit code of `wait` for a status: `None` while the run is not terminal.
pub fn exit_code_for_status(status: &str) -> Option<u8> {
    if status == "COMPLETED" {
        Some(EXIT_COMPLETED)
    } else if is_terminal(status) {
        Some(EXIT_FAILED)
    } else {
        None
    }
}

fn format_elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// One frame of the live `wait` line: `⠋ <id> RUNNING  12.3s`.
fn progress_line(tick: usize, id: &str, status: &str, elapsed: Duration) -> String {
    let frame = SPINNER[tick % SPINNER.len()];
    format!("{frame} {id} {status}  {}", format_elapsed(elapsed))
}

/// A run's reported progress from its metadata: `40% epoch 4 of 10 (at 10:00:05)`.
fn format_progress(meta: &serde_json::Value) -> Option<String> {
    let p = meta.get("progress")?;
    let mut parts = Vec::new();
    if let Some(f) = p.get("fraction").and_then(serde_json::Value::as_f64) {
        parts.push(format!("{:.0}%", (f * 100.0).clamp(0.0, 100.0)));
    }
    if let Some(m) = meta_str(p, "message") {
        // One line, bounded: a message is the algorithm's text.
        let one: String = m
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(120)
            .collect();
        parts.push(one);
    }
    if parts.is_empty() {
        return None;
    }
    if let Some(at) = meta_str(p, "reported_at") {
        let t = short_time(at);
        parts.push(format!("(at {})", t.get(11..).unwrap_or(&t)));
    }
    Some(parts.join(" "))
}

/// A field of a metadata document, when it is a non-empty string.
fn meta_str<'a>(meta: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    meta.get(key)
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

/// How long a run took by its own clock (accepted → finished), how long it queued and how long
/// its last attempt ran: `in 1.2s (queued 0.1s, ran 1.1s)`. `None` until it finished.
fn run_took(meta: &serde_json::Value) -> Option<String> {
    let received = meta_str(meta, "received_at")?;
    let finished = meta_str(meta, "finished_at")?;
    let total = format_elapsed(span(received, finished)?);
    let attempts = meta
        .get("attempts")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let started = meta_str(meta, "started_at");
    let Some(ran) = started.and_then(|s| span(s, finished)) else {
        return Some(format!("in {total} (never started)"));
    };
    let queued = started
        .and_then(|s| span(received, s))
        .map(|q| format!("queued {}, ", format_elapsed(q)))
        .unwrap_or_default();
    Some(if attempts > 1 {
        format!(
            "in {total} ({attempts} attempts; the last ran {})",
            format_elapsed(ran)
        )
    } else {
        format!("in {total} ({queued}ran {})", format_elapsed(ran))
    })
}

/// The `details:` and `logs:` lines of a run that did not complete, from its metadata.
fn format_failure_extra(meta: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(d) = meta_str(meta, "algorithm_failure_details") {
        let _ = writeln!(out, "details: {d}");
    }
    if let Some(u) = meta_str(meta, "logs_uri") {
        let _ = writeln!(out, "logs:    {u}");
    }
    out
}

/// Human view of a run (`get`): its answer and, when the metadata could be read, its times,
/// attempts, shard, tag, parent, failure details and logs link (what `--wait` prints, and more).
fn format_result(r: &RequestResult, meta: Option<&serde_json::Value>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request: {}", r.request_id);
    let _ = writeln!(out, "status:  {}", r.status);
    if let Some(m) = meta {
        if let Some(t) = run_took(m) {
            let _ = writeln!(out, "took:    {}", t.trim_start_matches("in "));
        } else if let Some(at) = meta_str(m, "received_at") {
            let _ = writeln!(out, "since:   {}", short_time(at));
        }
        for (label, key) in [
            ("shard:   ", "shard"),
            ("tag:     ", "tag"),
            ("parent:  ", "parent"),
        ] {
            if let Some(v) = meta_str(m, key) {
                let _ = writeln!(out, "{label}{v}");
            }
        }
        if let Some(n) = m.get("attempts").and_then(serde_json::Value::as_u64) {
            let _ = writeln!(out, "attempts: {n}");
        }
        if let Some(p) = format_progress(m) {
            let _ = writeln!(out, "progress: {p}");
        }
    }
    if !r.result_uri.is_empty() {
        let _ = writeln!(out, "result:  {}", r.result_uri);
    }
    if !r.run_error_message.is_empty() {
        let _ = writeln!(out, "error:   {}", r.run_error_message);
    }
    if let Some(m) = meta {
        if r.status != "COMPLETED" {
            out.push_str(&format_failure_extra(m));
        } else if let Some(u) = meta_str(m, "logs_uri") {
            let _ = writeln!(out, "logs:    {u}");
        }
    }
    out
}

/// Final report of `wait` on stdout: the run's own duration when its metadata says it (else how
/// long this command waited), its result or error, and for a run that did not complete the
/// details and the logs link.
fn format_final(r: &RequestResult, meta: Option<&serde_json::Value>, waited: Duration) -> String {
    let mut out = String::new();
    let took = meta
        .and_then(run_took)
        .unwrap_or_else(|| format!("after {}", format_elapsed(waited)));
    let _ = writeln!(out, "{} {} {took}", r.request_id, r.status);
    if !r.result_uri.is_empty() {
        let _ = writeln!(out, "result:  {}", r.result_uri);
    }
    if !r.run_error_message.is_empty() {
        let _ = writeln!(out, "error:   {}", r.run_error_message);
    }
    if r.status != "COMPLETED"
        && let Some(m) = meta
    {
        out.push_str(&format_failure_extra(m));
    }
    out
}

fn timeout_message(algorithm: &str, id: &str, last_status: &str, timeout: Duration) -> String {
    let last = if last_status.is_empty() {
        String::new()
    } else {
        format!(" (last status {last_status})")
    };
    format!(
        "timed out after {} waiting for run {id}{last}; the run keeps going. \
         Keep waiting with `nexus run wait {algorithm} {id} --timeout 30m`, \
         or check it with `nexus run get {algorithm} {id}`",
        humantime::format_duration(timeout)
    )
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    truncate(&text.replace(['\n', '\r', '\t'], " "), max)
}

/// Aligns `rows` under `headers`, two spaces between columns, the last one unpadded.
fn format_rows<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: [&str; N]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(headers);
    for row in rows {
        push_row(std::array::from_fn(|i| row[i].as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: RunCommand,
    }

    fn tagged(id: &str, status: &str, uri: &str, err: &str) -> RunSummary {
        RunSummary {
            request_id: id.to_owned(),
            algorithm_name: "knapsack".to_owned(),
            status: status.to_owned(),
            result_uri: uri.to_owned(),
            run_error_message: err.to_owned(),
            submitted_at: "2026-12-07T06:13:29.123Z".into(),
            ..RunSummary::default()
        }
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn parses_submit_with_wait() {
        let cli = TestCli::try_parse_from([
            "nexus",
            "submit",
            "knapsack",
            "--params",
            "p.json",
            "--payload-valid-for",
            "6h",
            "--wait",
            "--timeout",
            "30s",
            "--server",
            "http://h:1",
        ])
        .expect("parses");
        assert_eq!(cli.opts.server, "http://h:1");
        match cli.cmd {
            RunCommand::Submit {
                algorithm,
                params,
                payload_valid_for,
                wait,
                timeout,
                ..
            } => {
                assert_eq!(algorithm, "knapsack");
                assert_eq!(params, PathBuf::from("p.json"));
                assert_eq!(payload_valid_for, Some(Duration::from_secs(6 * 3600)));
                assert!(wait);
                assert_eq!(timeout, Duration::from_secs(30));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_cancel_policy_case_insensitively() {
        let cli = TestCli::try_parse_from(["nexus", "cancel", "a", "id", "--policy", "orphan"])
            .expect("parses");
        match cli.cmd {
            RunCommand::Cancel { policy, .. } => assert_eq!(policy, Some(CancelPolicy::Orphan)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(CancelPolicy::Foreground.as_str(), "Foreground");
    }

    #[test]
    fn get_json_conflicts_with_metadata() {
        assert!(
            TestCli::try_parse_from(["nexus", "get", "a", "id", "--json", "--metadata"]).is_err()
        );
    }

    #[test]
    fn parse_json_accepts_documents() {
        let v = parse_json("p.json", "parameters", r#"{"items": [1, 2]}"#).expect("valid");
        assert_eq!(v["items"][1], 2);
    }

    #[test]
    fn parse_json_error_names_file_and_position() {
        let err =
            parse_json("p.json", "parameters", "{\n  \"a\": 1,\n  oops\n}").expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("p.json"), "{msg}");
        assert!(msg.contains("line 3, column 3"), "{msg}");
        assert!(!msg.contains(" at line "), "{msg}");
    }

    #[test]
    fn parse_json_rejects_empty_input() {
        let err = parse_json("<stdin>", "parameters", "  \n").expect_err("empty");
        assert!(err.to_string().contains("<stdin>"));
    }

    #[test]
    fn read_json_source_reports_missing_file() {
        let err = read_json_source(Path::new("/nonexistent/params.json"), "parameters")
            .expect_err("missing");
        assert!(format!("{err:#}").contains("/nonexistent/params.json"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(6 * 3600)), "6h");
        assert_eq!(go_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_for_status("COMPLETED"), Some(0));
        for s in [
            "FAILED",
            "SCHEDULING_FAILED",
            "DEADLINE_EXCEEDED",
            "CANCELLED",
        ] {
            assert_eq!(exit_code_for_status(s), Some(1), "{s}");
        }
        for s in ["NEW", "BUFFERED", "RUNNING", ""] {
            assert_eq!(exit_code_for_status(s), None, "{s}");
        }
    }

    #[test]
    fn table_aligns_and_truncates() {
        let long = "x".repeat(100);
        let mut done = tagged("id-1", "COMPLETED", "http://r/1?sig=long-signature", "");
        done.finished_at = Some("2026-12-07T06:13:31.623Z".into());
        let table = format_summaries(&[
            done,
            tagged("id-22", "FAILED", "", &format!("boom\n{long}")),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ID     ALGORITHM  STATUS     SUBMITTED            TOOK  ERROR"
        );
        // No URL cut to nothing: result URLs are in `--json`, `run get` and `run result`.
        assert_eq!(
            lines[1],
            "id-1   knapsack   COMPLETED  2026-12-07 06:13:29  2.5s"
        );
        assert!(lines[2].contains("  -     boom x"), "{}", lines[2]);
        assert!(lines[2].ends_with('…'));
        let error = lines[2].split("  -     ").nth(1).unwrap_or_default();
        assert_eq!(error.chars().count(), ERROR_COLUMN_WIDTH);
    }

    #[test]
    fn listing_table_and_times() {
        let run = RunSummary {
            request_id: "id-1".into(),
            algorithm_name: "knapsack".into(),
            status: "FAILED".into(),
            submitted_at: "2026-12-07T06:13:29.123Z".into(),
            run_error_message: "boom\nagain".into(),
            ..RunSummary::default()
        };
        let t = format_summaries(&[run]);
        assert_eq!(
            t,
            "ID    ALGORITHM  STATUS  SUBMITTED            TOOK  ERROR\n\
             id-1  knapsack   FAILED  2026-12-07 06:13:29  -     boom again\n"
        );
        let now = humantime::parse_rfc3339("2026-12-07T06:00:00Z").unwrap();
        assert_eq!(
            time_arg("--since", "2h", now).unwrap(),
            "2026-12-07T04:00:00.000Z"
        );
        assert_eq!(
            time_arg("--since", "2026-12-01T00:00:00Z", now).unwrap(),
            "2026-12-01T00:00:00Z"
        );
        let e = time_arg("--until", "soon", now).unwrap_err().to_string();
        assert!(e.contains("--until \"soon\": give a time"), "{e}");
    }

    #[test]
    fn explanations_read_top_down() {
        use nexus_proto::v1::TimelineEntry;
        let e = RunExplanation {
            request_id: "id-1".into(),
            algorithm_name: "knapsack".into(),
            status: "BUFFERED".into(),
            since: Some("2026-12-07T06:13:29.123Z".into()),
            summary: "waiting 5s in the queue of shard 'local' on scheduler s1: 2nd of 3 to be dispatched".into(),
            reasons: vec!["shard 'local' said \"slow down\"".into()],
            timeline: vec![TimelineEntry {
                at: "2026-12-07T06:13:29.123Z".into(),
                from: "NEW".into(),
                to: "BUFFERED".into(),
                by: "scheduler".into(),
                cause: "accepted by s1".into(),
            }],
            ..RunExplanation::default()
        };
        assert_eq!(
            format_explanation(&e),
            "run id-1 (knapsack): BUFFERED since 2026-12-07 06:13:29\n\
             \x20 waiting 5s in the queue of shard 'local' on scheduler s1: 2nd of 3 to be dispatched\n\
             why:\n\
             \x20 - shard 'local' said \"slow down\"\n\
             timeline:\n\
             \x20 AT                   CHANGE           BY         CAUSE\n\
             \x20 2026-12-07 06:13:29  NEW -> BUFFERED  scheduler  accepted by s1\n"
        );
    }

    #[test]
    fn run_commands_parse() {
        use clap::Parser as _;
        let cli = TestCli::try_parse_from(["t", "logs", "knapsack", "id", "-f"]).unwrap();
        assert!(matches!(cli.cmd, RunCommand::Logs { follow: true, .. }));
        let cli =
            TestCli::try_parse_from(["t", "result", "knapsack", "id", "-o", "out.json"]).unwrap();
        assert!(matches!(
            cli.cmd,
            RunCommand::Result {
                output: Some(_),
                ..
            }
        ));
        let cli =
            TestCli::try_parse_from(["t", "list", "--stage", "failed", "--since", "1h", "--all"])
                .unwrap();
        assert!(matches!(cli.cmd, RunCommand::List { all: true, .. }));
        assert!(TestCli::try_parse_from(["t", "list", "--limit", "0"]).is_err());
        assert!(TestCli::try_parse_from(["t", "list", "--all", "--cursor", "x"]).is_err());
    }

    #[test]
    fn truncate_is_char_aware() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
    }

    #[test]
    fn endpoints_encode_segments() {
        let base = parse_server_url("http://127.0.0.1:8090/").expect("url");
        let url = endpoint(&base, &["algorithm", "v1", "results", "tags", "a b/c"]).expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8090/algorithm/v1/results/tags/a%20b%2Fc"
        );
        let prefixed = parse_server_url("http://h:1/nexus").expect("url");
        let url = endpoint(&prefixed, &["algorithm", "v1"]).expect("url");
        assert_eq!(url.as_str(), "http://h:1/nexus/algorithm/v1");
    }

    #[test]
    fn server_url_validation() {
        assert!(parse_server_url("https://h").is_ok());
        assert!(parse_server_url("ftp://h").is_err());
        assert!(parse_server_url("not a url").is_err());
        assert!(parse_server_url("http://h:8090").is_ok());
    }

    #[test]
    fn http_errors_are_actionable() {
        let e = http_error(
            StatusCode::CONFLICT,
            "run already COMPLETED",
            "cancelling run x",
            false,
        );
        let msg = e.to_string();
        assert!(msg.contains("409"), "{msg}");
        assert!(msg.contains("run already COMPLETED"), "{msg}");
        let e = http_error(StatusCode::UNAUTHORIZED, "", "fetching", false);
        assert!(e.to_string().contains("NEXUS_TOKEN"));
    }

    #[test]
    fn progress_and_final_lines() {
        let line = progress_line(0, "abc", "RUNNING", Duration::from_millis(12_300));
        assert_eq!(line, "⠋ abc RUNNING  12.3s");
        assert_eq!(format_elapsed(Duration::from_secs(125)), "2m05s");
        let r = RequestResult {
            request_id: "abc".into(),
            status: "FAILED".into(),
            result_uri: String::new(),
            run_error_message: "OOMKilled".into(),
        };
        // Without metadata: how long the command waited.
        let out = format_final(&r, None, Duration::from_secs(3));
        assert!(out.starts_with("abc FAILED after 3.0s\n"), "{out}");
        assert!(out.contains("error:   OOMKilled"));
        // With it: the run's own times, whatever the wait saw, and details and logs.
        let meta = serde_json::json!({
            "received_at": "2026-12-07T10:00:00.000Z",
            "started_at": "2026-12-07T10:00:00.250Z",
            "finished_at": "2026-12-07T10:00:02.000Z",
            "attempts": 1,
            "algorithm_failure_details": "container OOMKilled (limit 256Mi)",
            "logs_uri": "http://h/logs?sig=x",
        });
        let out = format_final(&r, Some(&meta), Duration::from_millis(10));
        assert_eq!(
            out,
            "abc FAILED in 2.0s (queued 250ms, ran 1.8s)\nerror:   OOMKilled\n\
             details: container OOMKilled (limit 256Mi)\nlogs:    http://h/logs?sig=x\n"
        );
        let retried = serde_json::json!({
            "received_at": "2026-12-07T10:00:00Z",
            "started_at": "2026-12-07T10:00:05Z",
            "finished_at": "2026-12-07T10:00:06Z",
            "attempts": 3,
        });
        assert_eq!(
            run_took(&retried).as_deref(),
            Some("in 6.0s (3 attempts; the last ran 1.0s)")
        );
        let cancelled = serde_json::json!({
            "received_at": "2026-12-07T10:00:00Z",
            "finished_at": "2026-12-07T10:01:30Z",
        });
        assert_eq!(
            run_took(&cancelled).as_deref(),
            Some("in 1m30s (never started)")
        );
        assert_eq!(run_took(&serde_json::json!({"received_at": "x"})), None);
        let msg = timeout_message("knapsack", "abc", "RUNNING", Duration::from_secs(600));
        assert!(msg.contains("nexus run wait knapsack abc"));
        assert!(msg.contains("10m"));
    }

    #[test]
    fn progress_reads_as_percent_message_and_time() {
        let meta = serde_json::json!({"progress": {
            "fraction": 0.404, "message": "epoch 4\nof 10", "reported_at": "2026-12-07T10:00:05.123Z"
        }});
        assert_eq!(
            format_progress(&meta).as_deref(),
            Some("40% epoch 4 of 10 (at 10:00:05)")
        );
        let only = serde_json::json!({"progress": {"fraction": 1.0, "reported_at": "x"}});
        assert_eq!(format_progress(&only).as_deref(), Some("100% (at x)"));
        assert_eq!(format_progress(&serde_json::json!({})), None);
        let long = serde_json::json!({"progress": {"message": "m".repeat(500)}});
        assert_eq!(format_progress(&long).unwrap().len(), 120);
    }

    #[test]
    fn get_shows_what_wait_shows_and_more() {
        let r = RequestResult {
            request_id: "abc".into(),
            status: "CANCELLED".into(),
            result_uri: String::new(),
            run_error_message: "Cancelled by 'ops'".into(),
        };
        let meta = serde_json::json!({
            "received_at": "2026-12-07T10:00:00Z",
            "started_at": "2026-12-07T10:00:01Z",
            "finished_at": "2026-12-07T10:00:03Z",
            "attempts": 1,
            "shard": "local",
            "tag": "tour",
            "algorithm_failure_details": "Run cancelled, reason: 'changed my mind'",
            "logs_uri": "http://h/logs?sig=x",
        });
        assert_eq!(
            format_result(&r, Some(&meta)),
            "request: abc\nstatus:  CANCELLED\ntook:    3.0s (queued 1.0s, ran 2.0s)\n\
             shard:   local\ntag:     tour\nattempts: 1\nerror:   Cancelled by 'ops'\n\
             details: Run cancelled, reason: 'changed my mind'\nlogs:    http://h/logs?sig=x\n"
        );
        // Without metadata (not readable by this caller): the answer alone.
        assert_eq!(
            format_result(&r, None),
            "request: abc\nstatus:  CANCELLED\nerror:   Cancelled by 'ops'\n"
        );
    }

    #[test]
    fn failed_runs_show_details_and_logs() {
        let meta = serde_json::json!({
            "algorithm_failure_details": "the process exited with code 1; 1 attempt(s) made",
            "logs_uri": "http://h/logs?sig=x",
            "algorithm_failure_cause": "Algorithm process failed"
        });
        assert_eq!(
            format_failure_extra(&meta),
            "details: the process exited with code 1; 1 attempt(s) made\nlogs:    http://h/logs?sig=x\n"
        );
        assert_eq!(
            format_failure_extra(&serde_json::json!({"algorithm_failure_details": ""})),
            ""
        );
    }
}
