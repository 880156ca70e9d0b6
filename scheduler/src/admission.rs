//! Admission: turns a request for a run into a durable, queued run, for every front end (the
//! HTTP v1 API in [`crate::api`], gRPC `CreateRun` in [`crate::grpc`]).
//!
//! It owns, in this order: the template and workgroup lookup, the per-run overrides and their
//! bounds, the tag and idempotency-key checks, the execution-tree checks of a child run, the
//! queue bound, payload placement (inline or in the payload store), the durable write and the
//! enqueue, idempotent replays, and dry runs. The order is part of the contract: a request with
//! several faults is refused for the first one met.
//!
//! Invariants:
//! * a run is answered as accepted only once it is durable; a run stored `BUFFERED` is always
//!   pushed to the queue, even when the caller goes away mid-accept (the write and the push run
//!   in their own task);
//! * a repeated idempotency key returns the first run when the request is the same, and
//!   [`AdmitError::IdempotencyKeyReused`] when it is not; the payload object stored for the
//!   repeat is deleted again;
//! * a dry run is stored `COMPLETED`, owned by nobody, and never queued.
//!
//! It must not know about HTTP or gRPC: front ends parse their wire format into an
//! [`AdmitRequest`] and render an [`AdmitError`] through its [`AdmitError::kind`] (the one
//! kind → status/code table, [`nexus_model::error::ErrorKind`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_model::error::ErrorKind;
use nexus_model::run::{PayloadLocation, Run, RunId, Stage, StageChange, now_millis};
use nexus_model::spec::{AlgorithmSpec, SpecOverride, ValidationErrors, parse_duration};
use nexus_payload::{Keys, PayloadError};
use nexus_store::{BatchInserted, Inserted, RunBatch, StoreError};
use sha2::Digest as _;

use crate::queue::Queued;
use crate::{Scheduler, SchedulerConfig, metrics, spool};

/// Most characters of a tag.
pub const MAX_TAG_CHARS: usize = 256;

/// A run's payload (`algorithmParameters`) as it arrived: a JSON object, already validated.
#[derive(Debug)]
pub enum Parameters {
    /// In memory.
    Memory(Vec<u8>),
    /// In a spooled request, validated and hashed while it was split (see [`crate::spool`]).
    Spooled(spool::SpooledPayload),
}

impl Parameters {
    /// Returns the payload of a parsed JSON value: its compact text.
    ///
    /// # Errors
    /// [`AdmitError::ParametersRequired`] for `null`, [`AdmitError::ParametersNotObject`] for
    /// anything but an object.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, AdmitError> {
        if v.is_null() {
            return Err(AdmitError::parameters_required());
        }
        let bytes = serde_json::to_vec(v).map_err(|e| AdmitError::Internal {
            what: "cannot print algorithmParameters",
            source: Box::new(e),
        })?;
        require_object(bytes.first().copied())?;
        Ok(Self::Memory(bytes))
    }
}

/// The parent named by a child run: `{requestId, algorithmName}` as given (checked by admission).
#[derive(Debug, Clone)]
pub struct ParentRef {
    /// The parent's id, as text (a UUID).
    pub request_id: String,
    /// The parent's algorithm.
    pub algorithm: String,
}

/// A request for a run, front-end neutral.
#[derive(Debug)]
pub struct AdmitRequest {
    /// Template name.
    pub algorithm: String,
    /// The payload.
    pub parameters: Parameters,
    /// Client tag.
    pub tag: Option<String>,
    /// Per-run overrides of the template spec (`customConfiguration`; `null` is none).
    pub custom_configuration: Option<serde_json::Value>,
    /// Stored verbatim (`requestApiVersion`).
    pub api_version: Option<String>,
    /// Validity of the payload URL, as a duration text (`payloadValidFor`).
    pub payload_valid_for: Option<String>,
    /// The parent of a child run.
    pub parent: Option<ParentRef>,
    /// The idempotency key as received (checked by admission).
    pub idempotency_key: Option<String>,
    /// Store the run as completed, without running it.
    pub dry_run: bool,
    /// When the request arrived (for the accept-latency metric).
    pub received: Instant,
    /// The caller's right to submit, checked once the run's workgroup and parent are known
    /// (`None`: no check, authentication off or a run creating its own child).
    pub authorize: Option<SubmitCheck>,
}

/// One run of a batch: its own parameters and tag.
#[derive(Debug)]
pub struct BatchItem {
    /// The payload.
    pub parameters: Parameters,
    /// Client tag of this run.
    pub tag: Option<String>,
}

/// A request for many runs of one algorithm, all accepted or none, front-end neutral.
#[derive(Debug)]
pub struct BatchRequest {
    /// Template name.
    pub algorithm: String,
    /// The runs, in order.
    pub items: Vec<BatchItem>,
    /// Per-run overrides shared by every run.
    pub custom_configuration: Option<serde_json::Value>,
    /// Stored verbatim on every run.
    pub api_version: Option<String>,
    /// Validity of the payload URLs.
    pub payload_valid_for: Option<String>,
    /// The parent of every run (child runs of an execution tree).
    pub parent: Option<ParentRef>,
    /// The batch's idempotency key: a repeated batch returns the first batch's ids.
    pub batch_key: Option<String>,
    /// Store the runs as completed, without running them.
    pub dry_run: bool,
    /// When the request arrived.
    pub received: Instant,
    /// The caller's right to submit.
    pub authorize: Option<SubmitCheck>,
}

/// The shard recorded on external runs (they run on none of Nexus's shards).
pub const EXTERNAL_SHARD: &str = "external";

/// Clock skew tolerated in an external engine's reported times, in milliseconds.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// A run executed outside Nexus, to register ([`Admission::admit_external`]).
#[derive(Debug)]
pub struct ExternalRequest {
    /// Template name.
    pub algorithm: String,
    /// The run's input.
    pub parameters: Parameters,
    /// Its stage: BUFFERED (reported as CREATED), RUNNING, COMPLETED or FAILED.
    pub stage: Stage,
    /// Its output (JSON), stored as the run's result.
    pub result: Option<Vec<u8>>,
    /// Where its output lives, when stored elsewhere.
    pub result_uri: Option<String>,
    /// Failure cause and details (FAILED).
    pub failure: Option<(String, String)>,
    /// When it was created (default: now).
    pub received_at: Option<nexus_model::run::Millis>,
    /// When it started (default: when created).
    pub started_at: Option<nexus_model::run::Millis>,
    /// When it finished (default: now).
    pub finished_at: Option<nexus_model::run::Millis>,
    /// The engine's name (`spark`, …), recorded as the executor.
    pub engine: Option<String>,
    /// Client tag.
    pub tag: Option<String>,
    /// Stored verbatim.
    pub api_version: Option<String>,
    /// Its parent, when it belongs to an execution tree.
    pub parent: Option<ParentRef>,
    /// Idempotency key: a repeated registration returns the first run.
    pub idempotency_key: Option<String>,
    /// The caller's right to submit runs of the algorithm.
    pub authorize: Option<SubmitCheck>,
}

/// An accepted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAdmitted {
    /// The runs' ids, in the order of the request.
    pub ids: Vec<RunId>,
    /// False when an earlier batch under the same key was returned.
    pub created: bool,
}

/// The fields every submission checks once ([`Admission::check`]).
pub(crate) struct Common<'a> {
    algorithm: String,
    custom_configuration: Option<serde_json::Value>,
    payload_valid_for: Option<String>,
    parent: Option<ParentRef>,
    idempotency_key: Option<&'a str>,
    authorize: Option<&'a SubmitCheck>,
    tag: Option<&'a str>,
    /// How many runs the submission creates (tree fan-out limit).
    runs: usize,
}

/// What [`Admission::check`] found: everything a new run of the submission shares.
pub(crate) struct Checked {
    algorithm: String,
    workgroup: String,
    shard: String,
    applied: AlgorithmSpec,
    overrides_json: Option<serde_json::Value>,
    valid_for: Duration,
    parent: Option<nexus_model::run::RunRef>,
    root: Option<RunId>,
    depth: u32,
}

/// What differs between the runs of one submission.
pub(crate) struct NewRun {
    tag: Option<String>,
    api_version: Option<String>,
    idempotency_key: Option<String>,
    dry_run: bool,
    now: nexus_model::run::Millis,
}

/// What a submission targets, for [`SubmitCheck`].
#[derive(Debug)]
pub struct SubmitTarget<'a> {
    /// The template.
    pub algorithm: &'a str,
    /// The template's own workgroup.
    pub template_workgroup: &'a str,
    /// The workgroup the run goes to (the template's, or its override).
    pub workgroup: &'a str,
    /// The parent, for a child.
    pub parent: Option<&'a Run>,
}

/// A caller's right to submit: `Err(message)` refuses with 403 / `PERMISSION_DENIED`.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct SubmitCheck(pub Arc<dyn Fn(&SubmitTarget<'_>) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for SubmitCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubmitCheck")
    }
}

/// An accepted run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The run: new, or the first run of a repeated idempotency key.
    pub id: RunId,
    /// False when an earlier run under the same idempotency key was returned.
    pub created: bool,
}

/// Why a run was refused. The messages are the API's (person-readable, naming the field and the
/// configuration key of a limit); [`AdmitError::kind`] gives the status.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The caller may not submit this run (authorization rules); the message says what is
    /// missing.
    #[error("{0}")]
    Forbidden(String),
    /// The request nests deeper than `scheduler.max_json_depth`.
    #[error(
        "Algorithm payload is invalid: JSON nested deeper than {limit} levels (scheduler.max_json_depth)"
    )]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// No `algorithmParameters`.
    #[error("Algorithm payload is invalid: algorithmParameters is required (any JSON object)")]
    ParametersRequired,
    /// `algorithmParameters` is not a JSON object.
    #[error("Algorithm payload is invalid: algorithmParameters must be a JSON object, got {got}")]
    ParametersNotObject {
        /// What was sent instead (`an array`, `a string`, …).
        got: &'static str,
    },
    /// No template of this name.
    #[error(
        "No valid configuration found for: {algorithm}. Please check that algorithm name is spelled correctly and try again."
    )]
    UnknownAlgorithm {
        /// The name asked for.
        algorithm: String,
    },
    /// `customConfiguration` is not a valid override.
    #[error("Algorithm payload is invalid: {source}")]
    InvalidOverrides {
        /// The field errors.
        #[source]
        source: ValidationErrors,
    },
    /// The (overridden) workgroup does not exist.
    #[error(
        "Cannot assign requested workgroup {workgroup} to the algorithm {algorithm}: the workgroup does not exist"
    )]
    UnknownWorkgroup {
        /// The workgroup.
        workgroup: String,
        /// The template.
        algorithm: String,
    },
    /// `payloadValidFor` is not a duration.
    #[error("payloadValidFor: {0}")]
    InvalidValidFor(String),
    /// `payloadValidFor` is over `scheduler.max_payload_valid_for`.
    #[error(
        "payloadValidFor: {} is longer than the limit of {} (scheduler.max_payload_valid_for)",
        humantime::format_duration(*.asked),
        humantime::format_duration(*.limit)
    )]
    ValidForTooLong {
        /// Asked for.
        asked: Duration,
        /// The limit.
        limit: Duration,
    },
    /// `maximumRetries` is over `scheduler.max_retries`.
    #[error(
        "runtimeEnvironment.maximumRetries: {asked} is over the limit of {limit} (scheduler.max_retries)"
    )]
    TooManyRetries {
        /// Asked for.
        asked: u32,
        /// The limit.
        limit: u32,
    },
    /// `deadlineSeconds` is over `scheduler.max_deadline`.
    #[error(
        "runtimeEnvironment.deadlineSeconds: {} is over the limit of {} (scheduler.max_deadline)",
        .asked.as_secs(),
        humantime::format_duration(*.limit)
    )]
    DeadlineTooLong {
        /// Asked for.
        asked: Duration,
        /// The limit.
        limit: Duration,
    },
    /// The tag is longer than [`MAX_TAG_CHARS`].
    #[error("tag: {chars} characters; a tag is at most {MAX_TAG_CHARS} characters")]
    TagTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// The tag holds control characters.
    #[error("tag: must not contain control characters (newlines, tabs, …)")]
    TagControlCharacters,
    /// The idempotency key is not 1 to 256 visible ASCII characters.
    #[error("Idempotency-Key: must be 1 to 256 visible ASCII characters (e.g. a UUID)")]
    InvalidIdempotencyKey,
    /// A run id that is not a UUID.
    #[error("'{id}' is not a valid request id (expected a UUID)")]
    InvalidRunId {
        /// As given.
        id: String,
    },
    /// The parent does not exist (under that algorithm).
    #[error(
        "parentRequest: Provided request with identifier '{id}' not found for algorithm '{algorithm}'"
    )]
    ParentNotFound {
        /// As given.
        id: String,
        /// As given.
        algorithm: String,
    },
    /// The parent was cancelled.
    #[error("parentRequest: run {parent} was cancelled; it cannot have new children")]
    ParentCancelled {
        /// The parent.
        parent: RunId,
    },
    /// The parent finished.
    #[error(
        "parentRequest: run {parent} already finished as {stage}; a finished run cannot have new children"
    )]
    ParentFinished {
        /// The parent.
        parent: RunId,
        /// Its final stage.
        stage: Stage,
    },
    /// The child would be deeper than `scheduler.max_tree_depth`.
    #[error(
        "parentRequest: a child of {parent} would be at depth {depth} of its execution tree; the limit is {limit} (scheduler.max_tree_depth)"
    )]
    TreeTooDeep {
        /// The parent.
        parent: RunId,
        /// The child's depth.
        depth: u32,
        /// The limit.
        limit: u32,
    },
    /// The parent has `scheduler.max_children_per_run` children already.
    #[error(
        "parentRequest: run {parent} already has {count} children; the limit is {limit} (scheduler.max_children_per_run)"
    )]
    TooManyChildren {
        /// The parent.
        parent: RunId,
        /// Its children (counted up to the limit).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An external run's registration or report is inconsistent.
    #[error("external run: {0}")]
    External(String),
    /// A batch without runs.
    #[error("runs: a batch holds at least one run")]
    BatchEmpty,
    /// A batch over `scheduler.max_batch_runs`.
    #[error(
        "runs: {runs} runs in one batch; the limit is {limit} (scheduler.max_batch_runs): split the batch"
    )]
    BatchTooLarge {
        /// Runs asked for.
        runs: usize,
        /// The limit.
        limit: usize,
    },
    /// One run of a batch is invalid (the whole batch is refused).
    #[error("runs[{index}].{source}")]
    Item {
        /// Its index in the batch.
        index: usize,
        /// What is wrong with it.
        source: Box<AdmitError>,
    },
    /// The queue is at its bound.
    #[error("the scheduler's queue is full; retry later")]
    QueueFull,
    /// The idempotency key was used before for a different request.
    #[error(
        "Idempotency-Key '{key}' was already used for run {existing} with a different request ({field} differs); use a new key for a new run"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The run first created under it.
        existing: RunId,
        /// The first field that differs.
        field: &'static str,
    },
    /// A batch's idempotency key was used before for a batch of another size.
    #[error(
        "Idempotency-Key '{key}' was already used for a batch of {existing} runs; this batch has {runs}: use a new key for a new batch"
    )]
    BatchKeyReused {
        /// The key.
        key: String,
        /// Runs in this batch.
        runs: usize,
        /// Runs in the first batch.
        existing: usize,
    },
    /// The run store failed.
    #[error("run store unavailable, try again: {source}")]
    Store {
        /// The store's error.
        #[from]
        source: StoreError,
    },
    /// The payload store failed.
    #[error("payload store unavailable, try again: {}", .source.message)]
    Payload {
        /// The payload store's error.
        #[from]
        source: PayloadError,
    },
    /// The spool file of a big request failed.
    #[error("spool file: {source}")]
    Spool {
        /// The I/O error.
        #[from]
        source: std::io::Error,
    },
    /// A bug: a task failed, a value could not be printed.
    #[error("{what}: {source}")]
    Internal {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AdmitError {
    /// Returns the kind, which gives the HTTP status and the gRPC code
    /// ([`ErrorKind::http_status`], [`ErrorKind::grpc_code`]).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdmitError::ParentCancelled { .. } | AdmitError::ParentFinished { .. } => {
                ErrorKind::Conflict
            }
            AdmitError::QueueFull => ErrorKind::ResourceExhausted,
            AdmitError::Forbidden(_) => ErrorKind::Forbidden,
            AdmitError::Store { source } => source.kind(),
            AdmitError::Payload { source } => source.kind,
            AdmitError::Spool { .. } | AdmitError::Internal { .. } => ErrorKind::Internal,
            AdmitError::Item { source, .. } => source.kind(),
            _ => ErrorKind::InvalidInput,
        }
    }

    /// Returns the HTTP status: the kind's, except `422 Unprocessable Content` for a reused
    /// idempotency key (as the IETF idempotency-key draft asks; gRPC has no such code and gets
    /// the kind's, `INVALID_ARGUMENT`).
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            AdmitError::IdempotencyKeyReused { .. } | AdmitError::BatchKeyReused { .. } => 422,
            e => e.kind().http_status(),
        }
    }

    /// The missing-payload error, counted as an invalid body.
    #[must_use]
    pub fn parameters_required() -> Self {
        metrics::rejected("invalid_body");
        AdmitError::ParametersRequired
    }

    /// The too-deep error, counted as an invalid body.
    #[must_use]
    pub fn too_deep(limit: usize) -> Self {
        metrics::rejected("invalid_body");
        AdmitError::TooDeep { limit }
    }

    fn internal(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        AdmitError::Internal {
            what,
            source: Box::new(e),
        }
    }
}

/// Checks that a payload starting with `first` is a JSON object (the reference's
/// `algorithmParameters` is an object: `map[string]any`).
///
/// # Errors
/// [`AdmitError::ParametersNotObject`] naming what was sent instead.
pub fn require_object(first: Option<u8>) -> Result<(), AdmitError> {
    let got = match first {
        Some(b'{') => return Ok(()),
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
        None => "nothing",
    };
    metrics::rejected("invalid_body");
    Err(AdmitError::ParametersNotObject { got })
}

/// Checks a client tag: at most [`MAX_TAG_CHARS`] characters, no control characters.
///
/// # Errors
/// [`AdmitError::TagTooLong`], [`AdmitError::TagControlCharacters`].
pub fn check_tag(tag: &str) -> Result<(), AdmitError> {
    let chars = tag.chars().count();
    if chars > MAX_TAG_CHARS {
        return Err(AdmitError::TagTooLong { chars });
    }
    if tag.chars().any(char::is_control) {
        return Err(AdmitError::TagControlCharacters);
    }
    Ok(())
}

/// Checks an idempotency key: 1 to 256 visible ASCII characters (RFC 9110 field values may carry
/// other bytes, which clients and proxies handle inconsistently, so they are refused rather than
/// silently ignored).
fn check_idempotency_key(k: &str) -> Result<(), AdmitError> {
    if k.is_empty() || k.len() > 256 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        metrics::rejected("invalid_header");
        return Err(AdmitError::InvalidIdempotencyKey);
    }
    Ok(())
}

/// Upper bounds on what a template or a run's `customConfiguration` may ask for.
fn check_run_bounds(c: &SchedulerConfig, spec: &AlgorithmSpec) -> Result<(), AdmitError> {
    let retries = spec.maximum_retries();
    if retries > c.max_retries {
        return Err(AdmitError::TooManyRetries {
            asked: retries,
            limit: c.max_retries,
        });
    }
    let deadline = Duration::from_secs(u64::from(spec.deadline_seconds()));
    if deadline > c.max_deadline {
        return Err(AdmitError::DeadlineTooLong {
            asked: deadline,
            limit: c.max_deadline,
        });
    }
    Ok(())
}

/// Returns bytes as lowercase hex.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The admission pipeline of one scheduler.
#[derive(Debug, Clone)]
pub struct Admission {
    s: Arc<Scheduler>,
}

impl Admission {
    /// Admission over `s` (its config, catalog, stores and queue).
    #[must_use]
    pub fn new(s: Arc<Scheduler>) -> Self {
        Self { s }
    }

    /// Admits a run: checks the request, stores its payload, writes the run durably and queues
    /// it (a dry run is stored completed and not queued).
    ///
    /// # Errors
    /// An [`AdmitError`] for the first fault met, in the order of the module's header.
    #[tracing::instrument(skip_all, fields(alg = %req.algorithm, dry_run = req.dry_run))]
    pub async fn admit(&self, req: AdmitRequest) -> Result<Admitted, AdmitError> {
        let s = &self.s;
        let checked = self
            .check(Common {
                algorithm: req.algorithm,
                custom_configuration: req.custom_configuration,
                payload_valid_for: req.payload_valid_for,
                parent: req.parent,
                idempotency_key: req.idempotency_key.as_deref(),
                authorize: req.authorize.as_ref(),
                tag: req.tag.as_deref(),
                runs: 1,
            })
            .await?;
        if !req.dry_run && !s.queue.has_room() {
            metrics::rejected("queue_full");
            return Err(AdmitError::QueueFull);
        }
        let id = RunId::new();
        let placed = self
            .place_payload(&checked.algorithm, id, req.parameters)
            .await?;
        let dry_run = req.dry_run;
        let run = self.new_run(
            &checked,
            id,
            placed,
            NewRun {
                tag: req.tag,
                api_version: req.api_version,
                idempotency_key: req.idempotency_key,
                dry_run,
                now: now_millis(),
            },
        );
        let shard = run.shard.clone();
        let fingerprint = Fingerprint::of(&run);
        // The durable write and the enqueue run in their own task: a front end whose caller goes
        // away drops this future, and a run that became durable must still reach the queue (a
        // run stored BUFFERED but never queued would wait for the next restart).
        let s2 = Arc::clone(s);
        let inserted = tokio::spawn(async move {
            let r = s2.store.insert_minted(run).await;
            if matches!(r, Ok(Inserted::Created)) && !dry_run {
                s2.queue.push(Queued {
                    id,
                    shard,
                    attempt: 0,
                });
            }
            r
        })
        .await
        .map_err(|e| AdmitError::internal("accept task", e))??;
        let admitted = match inserted {
            Inserted::Created => Admitted { id, created: true },
            Inserted::Existing(existing) => {
                if let Some(key) = &fingerprint.stored_key {
                    // This request's copy of the payload belongs to no run.
                    let _ = s.payloads.delete(key).await;
                }
                fingerprint.same_request(&existing)?;
                Admitted {
                    id: existing.id,
                    created: false,
                }
            }
        };
        metrics::accepted(true);
        metrics::accept_latency(req.received.elapsed().as_secs_f64());
        tracing::debug!(run_id = %admitted.id, created = admitted.created, "run accepted");
        Ok(admitted)
    }

    /// The checks every submission makes once, in the module header's order: template,
    /// overrides, workgroup, `payloadValidFor`, run bounds, idempotency key, parent, the
    /// caller's right, tree limits for `runs` new children.
    pub(crate) async fn check(&self, c: Common<'_>) -> Result<Checked, AdmitError> {
        let s = &self.s;
        let alg = c.algorithm;
        let snap = s.catalog.snapshot();
        let Some(template) = snap.templates.get(&alg) else {
            metrics::accepted(false);
            return Err(AdmitError::UnknownAlgorithm { algorithm: alg });
        };
        let overrides_json = c.custom_configuration.filter(|v| !v.is_null());
        let overrides = overrides_json
            .as_ref()
            .map(SpecOverride::from_json)
            .transpose()
            .map_err(|source| AdmitError::InvalidOverrides { source })?;
        let applied = overrides
            .as_ref()
            .map_or_else(|| template.spec.clone(), |o| o.apply(&template.spec));
        let wg_name = applied.workgroup_name().unwrap_or_default().to_owned();
        let Some(workgroup) = snap.workgroups.get(&wg_name) else {
            return Err(AdmitError::UnknownWorkgroup {
                workgroup: wg_name,
                algorithm: alg,
            });
        };
        let valid_for = match &c.payload_valid_for {
            Some(d) => parse_duration(d).map_err(AdmitError::InvalidValidFor)?,
            None => applied
                .payload_configuration
                .as_ref()
                .and_then(|p| p.payload_valid_for.as_deref())
                .and_then(|d| parse_duration(d).ok())
                .unwrap_or(s.config.payload_valid_for),
        };
        if valid_for > s.config.max_payload_valid_for {
            return Err(AdmitError::ValidForTooLong {
                asked: valid_for,
                limit: s.config.max_payload_valid_for,
            });
        }
        check_run_bounds(&s.config, &applied)?;
        if let Some(tag) = c.tag {
            check_tag(tag)?;
        }
        if let Some(k) = c.idempotency_key {
            check_idempotency_key(k)?;
        }
        let parent_run = match &c.parent {
            None => None,
            Some(p) => Some(self.load_parent(p).await?),
        };
        if let Some(check) = c.authorize {
            (check.0)(&SubmitTarget {
                algorithm: &alg,
                template_workgroup: template.spec.workgroup_name().unwrap_or_default(),
                workgroup: &wg_name,
                parent: parent_run.as_ref(),
            })
            .map_err(AdmitError::Forbidden)?;
        }
        let (parent, root, depth) = match &parent_run {
            None => (None, None, 0),
            Some(pr) => {
                self.check_can_have_children(pr, c.runs).await?;
                (Some(pr.as_ref()), Some(pr.root), pr.depth + 1)
            }
        };
        Ok(Checked {
            algorithm: alg,
            shard: workgroup.spec.cluster.clone(),
            workgroup: wg_name,
            applied,
            overrides_json,
            valid_for,
            parent,
            root,
            depth,
        })
    }

    /// The record of a new run `id` that passed [`Admission::check`].
    pub(crate) fn new_run(
        &self,
        c: &Checked,
        id: RunId,
        (payload, content_hash, size): (PayloadLocation, String, u64),
        n: NewRun,
    ) -> Run {
        let s = &self.s;
        let NewRun {
            tag,
            api_version,
            idempotency_key,
            dry_run,
            now,
        } = n;
        let stage = if dry_run {
            Stage::Completed
        } else {
            Stage::Buffered
        };
        Run {
            id,
            algorithm: c.algorithm.clone(),
            stage,
            workgroup: c.workgroup.clone(),
            shard: c.shard.clone(),
            tag,
            api_version,
            parent: c.parent.clone(),
            root: c.root.unwrap_or(id),
            depth: c.depth,
            idempotency_key,
            owner: if dry_run {
                None
            } else {
                Some(s.instance_id.clone())
            },
            attempts: 0,
            applied_configuration: c.applied.clone(),
            configuration_overrides: c.overrides_json.clone(),
            payload,
            content_hash,
            payload_size: size,
            payload_valid_for: c.valid_for,
            result_uri: None,
            result_stored: false,
            logs_stored: false,
            failure_cause: None,
            failure_details: None,
            executor_ref: dry_run.then(|| "dry-run".to_owned()),
            received_at: now,
            started_at: None,
            finished_at: dry_run.then_some(now),
            last_modified: now,
            timeline: vec![StageChange {
                at: now,
                from: Stage::New,
                to: stage,
                by: "scheduler".to_owned(),
                cause: if dry_run {
                    "dry run: accepted and finished without running".to_owned()
                } else {
                    format!("accepted by {} for shard {}", s.instance_id, c.shard)
                },
            }],
            external: false,
            progress: None,
        }
    }

    /// Admits a batch: many runs of one algorithm, each with its own parameters (and tag),
    /// sharing everything else, all accepted or none. The runs are written in one
    /// [`RunStore::insert_batch`](nexus_store::RunStore::insert_batch) and queued in order.
    ///
    /// # Errors
    /// As [`Admission::admit`] for the shared fields (the first fault met); for an item, the
    /// error names its index (`runs[3].algorithmParameters: …`); [`AdmitError::BatchTooLarge`]
    /// over `scheduler.max_batch_runs`; [`AdmitError::QueueFull`] when the queue cannot take the
    /// whole batch.
    #[tracing::instrument(skip_all, fields(alg = %req.algorithm, runs = req.items.len()))]
    pub async fn admit_batch(&self, req: BatchRequest) -> Result<BatchAdmitted, AdmitError> {
        let s = &self.s;
        let n = req.items.len();
        if n == 0 {
            metrics::rejected("invalid_body");
            return Err(AdmitError::BatchEmpty);
        }
        if n > s.config.max_batch_runs {
            metrics::rejected("invalid_body");
            return Err(AdmitError::BatchTooLarge {
                runs: n,
                limit: s.config.max_batch_runs,
            });
        }
        for (i, item) in req.items.iter().enumerate() {
            if let Some(tag) = &item.tag {
                check_tag(tag).map_err(|e| AdmitError::Item {
                    index: i,
                    source: Box::new(e),
                })?;
            }
        }
        let checked = self
            .check(Common {
                algorithm: req.algorithm,
                custom_configuration: req.custom_configuration,
                payload_valid_for: req.payload_valid_for,
                parent: req.parent,
                idempotency_key: req.batch_key.as_deref(),
                authorize: req.authorize.as_ref(),
                tag: None,
                runs: n,
            })
            .await?;
        if !req.dry_run && !s.queue.has_room_for(n) {
            metrics::rejected("queue_full");
            return Err(AdmitError::QueueFull);
        }
        let now = now_millis();
        let mut runs = Vec::with_capacity(n);
        let mut stored_keys = Vec::new();
        let mut placed_all = Ok(());
        for item in req.items {
            let id = RunId::new();
            match self
                .place_payload(&checked.algorithm, id, item.parameters)
                .await
            {
                Ok(placed) => {
                    if let PayloadLocation::Stored { key } = &placed.0 {
                        stored_keys.push(key.clone());
                    }
                    runs.push(self.new_run(
                        &checked,
                        id,
                        placed,
                        NewRun {
                            tag: item.tag,
                            api_version: req.api_version.clone(),
                            idempotency_key: None,
                            dry_run: req.dry_run,
                            now,
                        },
                    ));
                }
                Err(e) => {
                    placed_all = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = placed_all {
            self.forget_objects(&stored_keys).await;
            return Err(e);
        }
        let fingerprints: Vec<Fingerprint> = runs.iter().map(Fingerprint::of).collect();
        let batch = RunBatch::new(checked.algorithm.clone(), req.batch_key.clone(), runs);
        let queued: Vec<Queued> = batch
            .runs
            .iter()
            .map(|r| Queued {
                id: r.id,
                shard: r.shard.clone(),
                attempt: 0,
            })
            .collect();
        let ids: Vec<RunId> = batch.runs.iter().map(|r| r.id).collect();
        let dry_run = req.dry_run;
        // As for one run: the write and the enqueue run in their own task, so a batch that
        // became durable always reaches the queue.
        let s2 = Arc::clone(s);
        let inserted = tokio::spawn(async move {
            let r = s2.store.insert_batch(batch).await;
            if matches!(r, Ok(BatchInserted::Created)) && !dry_run {
                for q in queued {
                    s2.queue.push(q);
                }
            }
            r
        })
        .await
        .map_err(|e| AdmitError::internal("accept task", e));
        let inserted = match inserted {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                self.forget_objects(&stored_keys).await;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let admitted = match inserted {
            BatchInserted::Created => BatchAdmitted { ids, created: true },
            BatchInserted::Existing(existing) => {
                // This request's copies of big payloads belong to no run.
                self.forget_objects(&stored_keys).await;
                if existing.len() != fingerprints.len() {
                    metrics::rejected("idempotency_conflict");
                    return Err(AdmitError::BatchKeyReused {
                        key: req.batch_key.unwrap_or_default(),
                        runs: fingerprints.len(),
                        existing: existing.len(),
                    });
                }
                for (f, e) in fingerprints.iter().zip(&existing) {
                    f.same_request(e)?;
                }
                BatchAdmitted {
                    ids: existing.iter().map(|r| r.id).collect(),
                    created: false,
                }
            }
        };
        metrics::accepted(true);
        metrics::accept_latency(req.received.elapsed().as_secs_f64());
        tracing::debug!(runs = n, created = admitted.created, "batch accepted");
        Ok(admitted)
    }

    /// Registers a run executed outside Nexus ([`ExternalRequest`]): checked as a submission of
    /// its algorithm (template, workgroup, tag, key, parent, the caller's right to submit),
    /// stored with no owner and never queued, in the stage the engine reports, with its times,
    /// its result (stored as the run's result object) or its error.
    ///
    /// # Errors
    /// As [`Admission::admit`]; [`AdmitError::External`] for an inconsistent report.
    #[tracing::instrument(skip_all, fields(alg = %req.algorithm, stage = %req.stage))]
    pub async fn admit_external(&self, req: ExternalRequest) -> Result<Admitted, AdmitError> {
        let s = &self.s;
        let bad = |m: String| {
            metrics::rejected("invalid_body");
            Err(AdmitError::External(m))
        };
        let now = now_millis();
        if !matches!(
            req.stage,
            Stage::Buffered | Stage::Running | Stage::Completed | Stage::Failed
        ) {
            return bad(format!(
                "stage: an external run is registered CREATED, RUNNING, COMPLETED or FAILED, not {}",
                req.stage
            ));
        }
        let terminal = req.stage.is_terminal();
        if req.stage == Stage::Failed && req.failure.is_none() {
            return bad("errorCause: required for a FAILED run".to_owned());
        }
        if req.stage != Stage::Failed && req.failure.is_some() {
            return bad("errorCause: only a FAILED run has one".to_owned());
        }
        if req.stage != Stage::Completed && (req.result.is_some() || req.result_uri.is_some()) {
            return bad("result, resultUri: only a COMPLETED run has a result".to_owned());
        }
        if req.result.is_some() && req.result_uri.is_some() {
            return bad("result, resultUri: give one or the other".to_owned());
        }
        let received_at = req.received_at.unwrap_or(now);
        let started_at = match req.stage {
            Stage::Buffered => {
                if req.started_at.is_some() {
                    return bad("startedAt: a CREATED run has not started".to_owned());
                }
                None
            }
            _ => Some(req.started_at.unwrap_or(received_at)),
        };
        let finished_at = if terminal {
            Some(req.finished_at.unwrap_or(now))
        } else {
            if req.finished_at.is_some() {
                return bad(format!("finishedAt: a {} run has not finished", req.stage));
            }
            None
        };
        // Times in order, none in the future (beyond a little clock skew).
        let mut last = ("receivedAt", received_at);
        for (name, t) in [("startedAt", started_at), ("finishedAt", finished_at)] {
            if let Some(t) = t {
                if t < last.1 {
                    return bad(format!("{name}: earlier than {}", last.0));
                }
                last = (name, t);
            }
        }
        if last.1 > now + MAX_CLOCK_SKEW_MS {
            return bad(format!("{}: in the future", last.0));
        }
        if received_at <= 0 {
            return bad("receivedAt: before 1970".to_owned());
        }
        let checked = self
            .check(Common {
                algorithm: req.algorithm,
                custom_configuration: None,
                payload_valid_for: None,
                parent: req.parent,
                idempotency_key: req.idempotency_key.as_deref(),
                authorize: req.authorize.as_ref(),
                tag: req.tag.as_deref(),
                runs: 1,
            })
            .await?;
        let id = RunId::new();
        let placed = self
            .place_payload(&checked.algorithm, id, req.parameters)
            .await?;
        let mut run = self.new_run(
            &checked,
            id,
            placed,
            NewRun {
                tag: req.tag,
                api_version: req.api_version,
                idempotency_key: req.idempotency_key,
                dry_run: false,
                now,
            },
        );
        let engine = req.engine.unwrap_or_else(|| "external".to_owned());
        run.external = true;
        run.owner = None;
        run.shard = EXTERNAL_SHARD.to_owned();
        run.stage = req.stage;
        run.executor_ref = Some(format!("external:{engine}"));
        run.received_at = received_at;
        run.started_at = started_at;
        run.finished_at = finished_at;
        run.attempts = u32::from(started_at.is_some());
        run.result_uri = req.result_uri;
        if let Some((cause, details)) = req.failure {
            run.failure_cause = Some(cause);
            run.failure_details = Some(details);
        }
        let mut timeline = vec![(received_at, Stage::New, Stage::Buffered)];
        if let Some(t) = started_at {
            timeline.push((t, Stage::Buffered, Stage::Running));
        }
        if let Some(t) = finished_at {
            timeline.push((t, Stage::Running, req.stage));
        }
        run.timeline = timeline
            .into_iter()
            .map(|(at, from, to)| StageChange {
                at,
                from,
                to,
                by: format!("external:{engine}"),
                cause: if to == Stage::Buffered {
                    format!("registered by the external engine {engine}")
                } else {
                    format!("reported by the external engine {engine}")
                },
            })
            .collect();
        // The result object first: a COMPLETED record never points at a missing result.
        let key = Keys::result(&run.algorithm, &id.to_string());
        if let Some(bytes) = req.result {
            s.payloads.put(&key, bytes.into()).await?;
            run.result_stored = true;
        }
        let fingerprint = Fingerprint::of(&run);
        let stored_result = run.result_stored;
        let inserted = s.store.insert_minted(run).await?;
        let admitted = match inserted {
            Inserted::Created => Admitted { id, created: true },
            Inserted::Existing(existing) => {
                if let Some(k) = &fingerprint.stored_key {
                    let _ = s.payloads.delete(k).await;
                }
                if stored_result {
                    let _ = s.payloads.delete(&key).await;
                }
                fingerprint.same_request(&existing)?;
                Admitted {
                    id: existing.id,
                    created: false,
                }
            }
        };
        metrics::accepted(true);
        Ok(admitted)
    }

    /// Deletes payload objects stored for runs that were not created (best effort: an object
    /// left behind belongs to no run and is never read).
    async fn forget_objects(&self, keys: &[String]) {
        for key in keys {
            let _ = self.s.payloads.delete(key).await;
        }
    }

    /// Loads the parent of a child run; unknown (or under another algorithm) is a bad request.
    async fn load_parent(&self, p: &ParentRef) -> Result<Run, AdmitError> {
        let rid: RunId = p.request_id.parse().map_err(|_| AdmitError::InvalidRunId {
            id: p.request_id.clone(),
        })?;
        match self.s.store.get(rid).await? {
            Some(r) if r.algorithm == p.algorithm => Ok(r),
            _ => Err(AdmitError::ParentNotFound {
                id: p.request_id.clone(),
                algorithm: p.algorithm.clone(),
            }),
        }
    }

    /// Execution-tree limits for `n` new children of `parent`.
    async fn check_can_have_children(&self, parent: &Run, n: usize) -> Result<(), AdmitError> {
        let c = &self.s.config;
        if parent.stage == Stage::Cancelled {
            return Err(AdmitError::ParentCancelled { parent: parent.id });
        }
        if parent.stage.is_terminal() {
            return Err(AdmitError::ParentFinished {
                parent: parent.id,
                stage: parent.stage,
            });
        }
        if parent.depth + 1 > c.max_tree_depth {
            return Err(AdmitError::TreeTooDeep {
                parent: parent.id,
                depth: parent.depth + 1,
                limit: c.max_tree_depth,
            });
        }
        let limit = c.max_children_per_run;
        let count = self.s.store.count_children(parent.id, limit).await?;
        if count.saturating_add(n) > limit {
            return Err(AdmitError::TooManyChildren {
                parent: parent.id,
                count,
                limit,
            });
        }
        Ok(())
    }

    /// Places the payload of run `id`: inline up to `scheduler.inline_payload_bytes`, else in
    /// the payload store. Returns the location, the SHA-256 (hex) and the size.
    pub(crate) async fn place_payload(
        &self,
        alg: &str,
        id: RunId,
        parameters: Parameters,
    ) -> Result<(PayloadLocation, String, u64), AdmitError> {
        let s = &self.s;
        let inline_max = s.config.inline_payload_bytes as u64;
        Ok(match parameters {
            Parameters::Memory(bytes) => {
                let hash = hex(&sha2::Sha256::digest(&bytes));
                let size = bytes.len() as u64;
                if size <= inline_max {
                    (PayloadLocation::Inline { bytes }, hash, size)
                } else {
                    let key = Keys::payload(alg, &id.to_string());
                    s.payloads.put(&key, bytes.into()).await?;
                    (PayloadLocation::Stored { key }, hash, size)
                }
            }
            Parameters::Spooled(mut p) => {
                let (hash, size) = (p.sha256.clone(), p.span.len);
                if size <= inline_max {
                    let bytes = tokio::task::spawn_blocking(move || p.read_all())
                        .await
                        .map_err(|e| AdmitError::internal("spool read task", e))??;
                    (PayloadLocation::Inline { bytes }, hash, size)
                } else {
                    let key = Keys::payload(alg, &id.to_string());
                    let reader = p.into_reader()?;
                    s.payloads.put_reader(&key, Box::new(reader), size).await?;
                    (PayloadLocation::Stored { key }, hash, size)
                }
            }
        })
    }
}

/// What makes two submissions under one idempotency key the same request.
struct Fingerprint {
    content_hash: String,
    tag: Option<String>,
    overrides: Option<serde_json::Value>,
    parent: Option<String>,
    /// The payload object this request stored (big payloads), deleted again when the key was
    /// already used.
    stored_key: Option<String>,
}

impl Fingerprint {
    fn of(run: &Run) -> Self {
        Self {
            content_hash: run.content_hash.clone(),
            tag: run.tag.clone(),
            overrides: run.configuration_overrides.clone(),
            parent: run.parent.as_ref().map(|p| p.request_id.to_string()),
            stored_key: match &run.payload {
                PayloadLocation::Stored { key } => Some(key.clone()),
                PayloadLocation::Inline { .. } => None,
            },
        }
    }

    /// Refuses `existing` (the run first created under the key) when it came from a different
    /// request: the key was reused by mistake.
    fn same_request(&self, existing: &Run) -> Result<(), AdmitError> {
        let differs = if existing.content_hash != self.content_hash {
            Some("algorithmParameters")
        } else if existing.tag != self.tag {
            Some("tag")
        } else if existing.configuration_overrides != self.overrides {
            Some("customConfiguration")
        } else if existing.parent.as_ref().map(|p| p.request_id.to_string()) != self.parent {
            Some("parentRequest")
        } else {
            None
        };
        match differs {
            None => Ok(()),
            Some(field) => {
                metrics::rejected("idempotency_conflict");
                Err(AdmitError::IdempotencyKeyReused {
                    key: existing.idempotency_key.clone().unwrap_or_default(),
                    existing: existing.id,
                    field,
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use nexus_model::catalog::{Catalog, Snapshot};
    use nexus_model::error::ErrorKind;
    use nexus_model::run::Stage;
    use nexus_model::sign::Signer;
    use nexus_model::spec::{
        API_VERSION, AlgorithmSpec, AlgorithmTemplate, ObjectMeta, TEMPLATE_KIND, Workgroup,
        WorkgroupRef,
    };
    use nexus_payload::{InMemoryPayloadStore, PayloadError};
    use nexus_store::{InMemoryRunStore, RunStore};

    use super::{Admission, AdmitError, AdmitRequest, Parameters, ParentRef};
    use crate::{Deps, Scheduler, SchedulerConfig, ShardMap};

    /// A scheduler over in-memory fakes with template `knapsack` on workgroup `wg`.
    pub(crate) fn scheduler(config: SchedulerConfig) -> (Arc<Scheduler>, Arc<InMemoryRunStore>) {
        scheduler_with_auth(config, nexus_auth::Authenticator::none())
    }

    /// As [`scheduler`], with `auth`.
    pub(crate) fn scheduler_with_auth(
        config: SchedulerConfig,
        auth: nexus_auth::Authenticator,
    ) -> (Arc<Scheduler>, Arc<InMemoryRunStore>) {
        scheduler_with(config, auth, ShardMap::default())
    }

    /// As [`scheduler_with_auth`], with `shards`.
    pub(crate) fn scheduler_with(
        config: SchedulerConfig,
        auth: nexus_auth::Authenticator,
        shards: ShardMap,
    ) -> (Arc<Scheduler>, Arc<InMemoryRunStore>) {
        let mut snap = Snapshot::default();
        snap.workgroups
            .insert("wg".into(), Workgroup::on_cluster("wg", "local"));
        let template: AlgorithmTemplate = AlgorithmTemplate {
            api_version: API_VERSION.into(),
            kind: TEMPLATE_KIND.into(),
            metadata: ObjectMeta {
                name: "knapsack".into(),
                ..ObjectMeta::default()
            },
            spec: AlgorithmSpec {
                command: "true".into(),
                workgroup_ref: Some(WorkgroupRef {
                    name: "wg".into(),
                    ..WorkgroupRef::default()
                }),
                ..AlgorithmSpec::default()
            },
        };
        snap.templates.insert("knapsack".into(), template);
        let store = Arc::new(InMemoryRunStore::default());
        let s = Scheduler::with_auth(
            config,
            Deps {
                store: store.clone(),
                payloads: Arc::new(InMemoryPayloadStore::default()),
                catalog: Catalog::new(snap),
                shards,
                signer: Signer::random(),
                instance_id: "me".into(),
                readiness: nexus_http::Readiness::default(),
            },
            auth,
        );
        (s, store)
    }

    pub(crate) fn request(alg: &str, params: &str) -> AdmitRequest {
        AdmitRequest {
            algorithm: alg.into(),
            parameters: Parameters::Memory(params.as_bytes().to_vec()),
            tag: None,
            custom_configuration: None,
            api_version: None,
            payload_valid_for: None,
            parent: None,
            idempotency_key: None,
            dry_run: false,
            received: Instant::now(),
            authorize: None,
        }
    }

    #[tokio::test]
    async fn an_admitted_run_is_durable_and_queued() {
        let (s, store) = scheduler(SchedulerConfig::default());
        let a = Admission::new(s.clone())
            .admit(request("knapsack", r#"{"capacity": 10}"#))
            .await
            .unwrap();
        assert!(a.created);
        let run = store
            .get(a.id)
            .await
            .unwrap()
            .expect("stored before the answer");
        assert_eq!(run.stage, Stage::Buffered);
        assert_eq!(run.owner.as_deref(), Some("me"));
        assert_eq!(run.workgroup, "wg");
        assert_eq!(s.queue.len(), 1);
    }

    #[tokio::test]
    async fn a_dry_run_is_stored_completed_and_not_queued() {
        let (s, store) = scheduler(SchedulerConfig::default());
        let mut req = request("knapsack", "{}");
        req.dry_run = true;
        let a = Admission::new(s.clone()).admit(req).await.unwrap();
        let run = store.get(a.id).await.unwrap().unwrap();
        assert_eq!(run.stage, Stage::Completed);
        assert_eq!(run.owner, None);
        assert_eq!(s.queue.len(), 0);
    }

    #[tokio::test]
    async fn unknown_template_and_workgroup_are_invalid_input() {
        let (s, _) = scheduler(SchedulerConfig::default());
        let adm = Admission::new(s);
        let e = adm.admit(request("nope", "{}")).await.unwrap_err();
        assert!(matches!(e, AdmitError::UnknownAlgorithm { .. }), "{e}");
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.kind().grpc_code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string()
                .starts_with("No valid configuration found for: nope.")
        );

        let mut req = request("knapsack", "{}");
        req.custom_configuration = Some(serde_json::json!({"workgroupRef": {"name": "gone"}}));
        let e = adm.admit(req).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "Cannot assign requested workgroup gone to the algorithm knapsack: the workgroup does not exist"
        );
    }

    #[tokio::test]
    async fn a_reused_idempotency_key_returns_the_first_run_or_422() {
        let (s, _) = scheduler(SchedulerConfig::default());
        let adm = Admission::new(s);
        let keyed = |params: &str| {
            let mut r = request("knapsack", params);
            r.idempotency_key = Some("k-1".into());
            r
        };
        let first = adm.admit(keyed(r#"{"a": 1}"#)).await.unwrap();
        let again = adm.admit(keyed(r#"{"a": 1}"#)).await.unwrap();
        assert_eq!((again.id, again.created), (first.id, false));
        let e = adm.admit(keyed(r#"{"a": 2}"#)).await.unwrap_err();
        assert!(matches!(
            e,
            AdmitError::IdempotencyKeyReused {
                field: "algorithmParameters",
                ..
            }
        ));
        assert_eq!(e.http_status(), 422);
        assert_eq!(e.kind().grpc_code(), tonic::Code::InvalidArgument);

        let mut bad = request("knapsack", "{}");
        bad.idempotency_key = Some("has space".into());
        assert!(matches!(
            adm.admit(bad).await.unwrap_err(),
            AdmitError::InvalidIdempotencyKey
        ));
    }

    #[tokio::test]
    async fn a_full_queue_is_resource_exhausted_but_a_dry_run_passes() {
        let (s, _) = scheduler(SchedulerConfig {
            queue_bound: 0,
            ..SchedulerConfig::default()
        });
        let adm = Admission::new(s);
        let e = adm.admit(request("knapsack", "{}")).await.unwrap_err();
        assert!(matches!(e, AdmitError::QueueFull));
        assert_eq!(e.http_status(), 429);
        assert_eq!(e.kind().grpc_code(), tonic::Code::ResourceExhausted);
        let mut dry = request("knapsack", "{}");
        dry.dry_run = true;
        adm.admit(dry).await.unwrap();
    }

    #[tokio::test]
    async fn a_child_needs_a_live_parent_of_that_algorithm() {
        let (s, store) = scheduler(SchedulerConfig::default());
        let adm = Admission::new(s);
        let parent = adm.admit(request("knapsack", "{}")).await.unwrap().id;
        let child = |alg: &str, id: String| {
            let mut r = request("knapsack", "{}");
            r.parent = Some(ParentRef {
                request_id: id,
                algorithm: alg.into(),
            });
            r
        };
        let kid = adm
            .admit(child("knapsack", parent.to_string()))
            .await
            .unwrap();
        let stored = store.get(kid.id).await.unwrap().unwrap();
        assert_eq!((stored.root, stored.depth), (parent, 1));

        let e = adm
            .admit(child("other", parent.to_string()))
            .await
            .unwrap_err();
        assert!(matches!(e, AdmitError::ParentNotFound { .. }), "{e}");
        assert!(e.to_string().starts_with("parentRequest: "));
        let e = adm.admit(child("knapsack", "x".into())).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "'x' is not a valid request id (expected a UUID)"
        );

        store
            .transition(
                parent,
                Stage::Buffered,
                Stage::Cancelled,
                nexus_model::run::RunPatch::failure("c", "d"),
            )
            .await
            .unwrap();
        let e = adm
            .admit(child("knapsack", parent.to_string()))
            .await
            .unwrap_err();
        assert!(matches!(e, AdmitError::ParentCancelled { .. }));
        assert_eq!(e.http_status(), 409);
        assert_eq!(e.kind().grpc_code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn backend_failures_keep_their_cause_and_kind() {
        let e = AdmitError::from(PayloadError::new(ErrorKind::Timeout, "slow bucket"));
        assert_eq!(
            e.to_string(),
            "payload store unavailable, try again: slow bucket"
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let cause = std::error::Error::source(&e).expect("the payload error is kept");
        assert!(cause.to_string().contains("slow bucket"));
    }
}
