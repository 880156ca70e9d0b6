//! JSON models of the HTTP v1 API (`/algorithm/v1/...`).

use serde::{Deserialize, Serialize};

/// Body of `POST /algorithm/v1/run/{algorithmName}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmRequest {
    /// Arbitrary JSON handed to the algorithm as its payload (required). Kept as the client's
    /// own text: the scheduler stores and hashes these bytes without parsing them into a tree
    /// and printing them again (build one with `serde_json::value::to_raw_value`).
    pub algorithm_parameters: Option<Box<serde_json::value::RawValue>>,
    /// Per-run overrides of the template spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_configuration: Option<serde_json::Value>,
    /// Stored verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_api_version: Option<String>,
    /// Client tag, for lookup by tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Parent run of an execution tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_request: Option<AlgorithmRequestRef>,
    /// Validity of the payload URL handed to the algorithm (Go duration, e.g. `6h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_valid_for: Option<String>,
}

/// A reference to a run: `{requestId, algorithmName}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmRequestRef {
    /// Run id.
    pub request_id: String,
    /// Algorithm name.
    pub algorithm_name: String,
}

/// `202` answer of `POST /run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCreated {
    /// The new (or, for a repeated idempotency key, the existing) run id.
    pub request_id: String,
}

/// `GET /results/{alg}/requests/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestResult {
    /// Run id.
    pub request_id: String,
    /// Stage name.
    pub status: String,
    /// Signed URL of the result (COMPLETED), else empty.
    pub result_uri: String,
    /// Failure cause (terminal failures), else empty.
    pub run_error_message: String,
}

/// An element of `GET /results/tags/{tag}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaggedRequestResult {
    /// Run id.
    pub request_id: String,
    /// Algorithm name.
    pub algorithm_name: String,
    /// Stage name.
    pub status: String,
    /// Result URL, if any.
    pub result_uri: String,
    /// Failure cause, if any.
    pub run_error_message: String,
}

/// Body of `POST /cancel/{alg}/requests/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancellationRequest {
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who.
    #[serde(default)]
    pub initiator: String,
    /// `Background` (default), `Foreground` or `Orphan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_policy: Option<String>,
}

/// Body of the receiver's `POST /algorithm/v1/complete/{alg}/requests/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmResult {
    /// Where the result is. Empty when the result was uploaded through the run's
    /// `NEXUS__RESULT_UPLOAD_URL`.
    #[serde(default)]
    pub result_uri: String,
    /// Set when the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_cause: Option<String>,
    /// Details of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
}

/// Body of the receiver's `POST /algorithm/v1/progress/{alg}/requests/{id}` (Nexus addition):
/// a running algorithm's progress. At least one field; the latest report wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressReport {
    /// How much is done, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// What the algorithm is doing (at most 512 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A run's latest progress as served in its metadata and in listings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// How much is done, from 0 to 1, when the algorithm said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// What the algorithm said it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it reported (RFC 3339).
    pub reported_at: String,
}

/// Environment variable names of the algorithm-container contract.
pub mod env {
    /// The run's algorithm name (reference).
    pub const ALGORITHM_NAME: &str = "NEXUS__ALGORITHM_NAME";
    /// The shard name (reference).
    pub const SHARD_NAME: &str = "NEXUS__SHARD_NAME";
    /// The parent run id (reference, when the run has a parent).
    pub const PARENT_REQUEST_ID: &str = "NEXUS__PARENT_REQUEST_ID";
    /// The parent algorithm (reference, when the run has a parent).
    pub const PARENT_ALGORITHM_NAME: &str = "NEXUS__PARENT_ALGORITHM_NAME";
    /// The run id (Nexus addition).
    pub const REQUEST_ID: &str = "NEXUS__REQUEST_ID";
    /// The run-scoped token to present as `Authorization: Bearer …` (Nexus addition).
    pub const RUN_TOKEN: &str = "NEXUS__RUN_TOKEN";
    /// Base URL of the receiver (Nexus addition).
    pub const RECEIVER_URL: &str = "NEXUS__RECEIVER_URL";
    /// Signed PUT URL for the result bytes (Nexus addition).
    pub const RESULT_UPLOAD_URL: &str = "NEXUS__RESULT_UPLOAD_URL";
    /// Signed GET URL of the payload (Nexus addition; same as `--sas-uri`).
    pub const PAYLOAD_URL: &str = "NEXUS__PAYLOAD_URL";
    /// Base URL of the schedulers' HTTP and gRPC `RunService` (Nexus addition; set when the
    /// receiver knows it): algorithms create child runs there.
    pub const SCHEDULER_URL: &str = "NEXUS__SCHEDULER_URL";
    /// A PEM CA certificate to trust for the URLs above, besides the system's roots (Nexus
    /// addition; set when Nexus serves a certificate from a private CA). Same name as the CLI's
    /// and SDKs' option, so an algorithm's own client picks it up.
    pub const CA_FILE: &str = "NEXUS_CA_FILE";
}

/// An element of `GET /algorithm/v1/runs` (a run's summary; `/metadata` has the whole record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Run id.
    pub request_id: String,
    /// Algorithm name.
    pub algorithm_name: String,
    /// Stage name.
    pub status: String,
    /// Client tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Parent run (execution trees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_request_id: Option<String>,
    /// Root of the run's execution tree (the run itself for a root).
    pub root_request_id: String,
    /// Shard the run is sent to.
    pub shard: String,
    /// Workgroup.
    pub workgroup: String,
    /// Launches so far.
    pub attempts: u32,
    /// When the run was submitted (RFC 3339; the time in its id).
    pub submitted_at: String,
    /// When the current attempt started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the run finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Result URL (COMPLETED), else empty.
    pub result_uri: String,
    /// Failure cause (terminal failures), else empty.
    pub run_error_message: String,
    /// True for a run executed outside Nexus and registered through the external-runs API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The latest progress the run reported (see `ProgressReport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
}

/// `GET /algorithm/v1/runs`: one page of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    /// The runs of this page that the caller may read.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent at the end. A page may hold fewer runs than
    /// `limit` (even none) while a cursor follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One stage change of a run (`GET /algorithm/v1/timeline/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When (RFC 3339).
    pub at: String,
    /// Stage before.
    pub from: String,
    /// Stage after.
    pub to: String,
    /// The component that made the change (`scheduler`, `receiver`, `executor`, `supervisor`,
    /// `tree`, or `nexus` when unrecorded).
    pub by: String,
    /// Why.
    pub cause: String,
}

/// `GET /algorithm/v1/timeline/{alg}/requests/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunTimeline {
    /// Run id.
    pub request_id: String,
    /// Algorithm name.
    pub algorithm_name: String,
    /// Stage now.
    pub status: String,
    /// Every recorded change, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// Where a queued run waits on the scheduler that answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuePlace {
    /// The scheduler holding the queue.
    pub scheduler: String,
    /// The shard (lane).
    pub shard: String,
    /// `priority` (recovered runs), `queue` (new runs) or `retry` (after a failed dispatch).
    pub part: String,
    /// 1 for the next run to go.
    pub position: u64,
    /// Runs in the lane.
    pub lane_length: u64,
    /// Dispatch attempts so far.
    pub attempt: u32,
    /// For a retry: milliseconds until it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// The state of a shard's lane on the scheduler that answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaneState {
    /// The shard.
    pub shard: String,
    /// Runs waiting in the lane.
    pub length: u64,
    /// Milliseconds the lane stays paused because the shard was unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_down_for_ms: Option<u64>,
    /// This scheduler's dispatch rate toward the shard now (runs per second).
    pub rate_per_second: f64,
    /// Its share of the shard's budget (the rate it climbs back to).
    pub ceiling_per_second: f64,
    /// Schedulers sharing the budget.
    pub schedulers: u32,
    /// True while the rate is below the ceiling after the shard said "slow down".
    pub slowed_down: bool,
}

/// One receiver endpoint of a shard, as the answering scheduler's client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverView {
    /// Its URL.
    pub endpoint: String,
    /// False while calls to it are paused after failures.
    pub up: bool,
    /// Milliseconds the pause lasts still.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_for_ms: Option<u64>,
}

/// One shard as the answering scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardView {
    /// Its lane on this scheduler: queued runs, dispatch rate and budget, pauses.
    pub lane: LaneState,
    /// Runs this scheduler handed to the shard since it started (two reads give a rate).
    pub handed_over_total: u64,
    /// True when the shard runs in this process (standalone): it has no receiver endpoints.
    pub in_process: bool,
    /// Its receivers (distributed mode).
    pub receivers: Vec<ReceiverView>,
}

/// `GET /algorithm/v1/shards`: the shards the caller's algorithms run on, as the answering
/// scheduler sees them (each scheduler holds its own lanes; a load balancer picks one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardsView {
    /// The scheduler that answers.
    pub scheduler: String,
    /// Runs queued in this scheduler, every lane.
    pub queued: u64,
    /// Its queue bound.
    pub queue_bound: u64,
    /// The shards, by name.
    pub shards: Vec<ShardView>,
}

/// `GET /algorithm/v1/explain/{alg}/requests/{id}`: what a run is doing and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunExplanation {
    /// Run id.
    pub request_id: String,
    /// Algorithm name.
    pub algorithm_name: String,
    /// Stage now.
    pub status: String,
    /// When it entered this stage (RFC 3339), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// One sentence.
    pub summary: String,
    /// Everything known that bears on it, one fact a line.
    pub reasons: Vec<String>,
    /// Its place in the queue, when the scheduler that answers holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePlace>,
    /// Its shard's lane on the scheduler that answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<LaneState>,
    /// What the shard's receivers say about the run now, one fact a line (their launch
    /// limiters; the run waiting for a workgroup slot, its process, or its Kubernetes Job's and
    /// pods' conditions). Asked only while the run has not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_facts: Vec<String>,
    /// The workgroup's concurrency limit per receiver (`maxConcurrentRuns`), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workgroup_max_concurrent_runs: Option<u32>,
    /// The run's stage changes, oldest first.
    pub timeline: Vec<TimelineEntry>,
}
