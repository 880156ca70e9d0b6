//! The run record and its stage machine.
//!
//! A *run* is one execution of an algorithm. Its record is the single source of truth for its
//! state; every change to the stage goes through [`Stage::can_transition_to`] and is applied by a
//! [`nexus_store::RunStore`] as a compare-and-set on the stored stage, so that concurrent writers
//! (dispatch, completion, supervision, cancel) can never move a run out of a terminal stage or
//! overwrite a result.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::spec::AlgorithmSpec;

/// Identifier of a run, also used as the Kubernetes Job name and the request id of the v1 API.
///
/// A UUIDv7: 48 bits of millisecond time then 74 random bits. Time-ordered ids keep every store's
/// primary-key index append-only (a B-tree insert touches the rightmost pages instead of a random
/// leaf, which halved the embedded store's write volume), while staying as unguessable as clients
/// need (request ids are not credentials: run tokens and signed URLs are). Clients treat the id as
/// an opaque string, as with the reference's v4 ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// Returns a fresh run id (time-ordered, see the type docs).
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Milliseconds since the Unix epoch. All timestamps in run records use this unit.
pub type Millis = i64;

/// Returns the current wall-clock time in milliseconds since the Unix epoch.
#[must_use]
pub fn now_millis() -> Millis {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Formats a millisecond timestamp as RFC 3339 (UTC, millisecond precision).
#[must_use]
pub fn format_millis(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The life-cycle stage of a run, with the v1 names kept for wire compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// Accepted, not yet durable in its final form (kept for compatibility; Nexus writes BUFFERED
    /// directly because a run is durable before the client is answered).
    New,
    /// Durable and waiting in a scheduler's queue (or in an executor's concurrency queue).
    Buffered,
    /// Its process or Job has started.
    Running,
    /// The algorithm reported success.
    Completed,
    /// The algorithm reported a failure, or its process failed.
    Failed,
    /// It could not be launched (dispatch retries exhausted, launch error, image pull, …).
    SchedulingFailed,
    /// It ran longer than `deadlineSeconds`.
    DeadlineExceeded,
    /// Somebody cancelled it (or an ancestor).
    Cancelled,
}

impl Stage {
    /// Every stage, in life-cycle order.
    pub const ALL: [Stage; 8] = [
        Stage::New,
        Stage::Buffered,
        Stage::Running,
        Stage::Completed,
        Stage::Failed,
        Stage::SchedulingFailed,
        Stage::DeadlineExceeded,
        Stage::Cancelled,
    ];

    /// Returns the v1 wire name (`"BUFFERED"`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::New => "NEW",
            Stage::Buffered => "BUFFERED",
            Stage::Running => "RUNNING",
            Stage::Completed => "COMPLETED",
            Stage::Failed => "FAILED",
            Stage::SchedulingFailed => "SCHEDULING_FAILED",
            Stage::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Stage::Cancelled => "CANCELLED",
        }
    }

    /// Returns true for the five stages a run never leaves.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        !matches!(self, Stage::New | Stage::Buffered | Stage::Running)
    }

    /// Returns true when a compare-and-set from `self` to `to` is legal.
    ///
    /// The table: NEW→BUFFERED→RUNNING→{COMPLETED, FAILED, DEADLINE_EXCEEDED};
    /// NEW/BUFFERED→SCHEDULING_FAILED; BUFFERED→FAILED (launch refused for a reason that retrying
    /// cannot fix); any non-terminal→CANCELLED; and a non-terminal stage to itself (a field update
    /// under compare-and-set, e.g. a new attempt or a new owner). A terminal stage is never left,
    /// not even to itself.
    #[must_use]
    pub fn can_transition_to(self, to: Stage) -> bool {
        use Stage::*;
        if self.is_terminal() {
            return false;
        }
        if self == to || to == Cancelled {
            return true;
        }
        matches!(
            (self, to),
            (New, Buffered)
                | (New, SchedulingFailed)
                | (Buffered, Running)
                | (Buffered, SchedulingFailed)
                | (Buffered, Failed)
                | (Running, Completed)
                | (Running, SchedulingFailed)
                | (Running, Failed)
                | (Running, DeadlineExceeded)
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown stage '{s}': expected one of {}",
                    Stage::ALL.map(Stage::as_str).join(", ")
                )
            })
    }
}

/// Reference to another run, as in the v1 `parentRequest` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    /// The referenced run's id.
    pub request_id: RunId,
    /// The referenced run's algorithm.
    pub algorithm_name: String,
}

/// Where a run's input payload lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum PayloadLocation {
    /// Small payloads live in the run record itself (one durable write per accept).
    Inline {
        /// The payload bytes (JSON of `algorithmParameters`).
        #[serde(with = "b64")]
        bytes: Vec<u8>,
    },
    /// Larger payloads live in the [`nexus_payload::PayloadStore`] under this key.
    Stored {
        /// The object key in the payload store.
        key: String,
    },
}

/// The durable record of one run.
///
/// Fields follow the reference checkpoint where they still make sense, plus ownership, attempts,
/// lineage and idempotency. The stage only changes through [`nexus_store::RunStore::transition`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Request id.
    pub id: RunId,
    /// Template (algorithm) name.
    pub algorithm: String,
    /// Current stage.
    pub stage: Stage,
    /// Workgroup the run was placed with (after per-run overrides).
    pub workgroup: String,
    /// Shard (cluster) the run is sent to: the workgroup's `spec.cluster`.
    pub shard: String,
    /// Client tag, indexed for lookup.
    pub tag: Option<String>,
    /// Client `requestApiVersion`, stored verbatim.
    pub api_version: Option<String>,
    /// Parent run, when this run is part of an execution tree.
    pub parent: Option<RunRef>,
    /// Root of the execution tree (the run itself when it has no parent).
    pub root: RunId,
    /// Depth in the execution tree (0 for a root).
    pub depth: u32,
    /// Client-supplied idempotency key: a retried submission with the same key (and algorithm)
    /// returns the same run.
    pub idempotency_key: Option<String>,
    /// Instance that currently answers for the run (the accepting scheduler while it is queued).
    pub owner: Option<String>,
    /// Number of launches so far (0 until first launched).
    pub attempts: u32,
    /// The template spec merged with the per-run overrides.
    pub applied_configuration: AlgorithmSpec,
    /// The raw per-run overrides (`customConfiguration`), if any.
    pub configuration_overrides: Option<serde_json::Value>,
    /// The input payload.
    pub payload: PayloadLocation,
    /// SHA-256 of the payload, lowercase hex.
    pub content_hash: String,
    /// Size of the payload in bytes.
    pub payload_size: u64,
    /// How long signed payload URLs handed to this run stay valid.
    #[serde(with = "humantime_serde")]
    pub payload_valid_for: Duration,
    /// Result location reported by the algorithm (`resultUri`), when it stores results itself.
    pub result_uri: Option<String>,
    /// True when the algorithm uploaded its result through Nexus (served by signed URL).
    pub result_stored: bool,
    /// True when the run's stdout/stderr were captured into the payload store.
    pub logs_stored: bool,
    /// Short failure reason.
    pub failure_cause: Option<String>,
    /// Long failure detail.
    pub failure_details: Option<String>,
    /// Executor handle of the current attempt (process id, Job uid, or `dry-run`).
    pub executor_ref: Option<String>,
    /// When the run was accepted.
    pub received_at: Millis,
    /// When the current attempt was launched.
    pub started_at: Option<Millis>,
    /// When the run reached a terminal stage.
    pub finished_at: Option<Millis>,
    /// Last time the record changed.
    pub last_modified: Millis,
    /// Every stage change, oldest first, with when, by whom and why (at most
    /// [`MAX_TIMELINE`] entries: the first and the newest are kept). Written by the same
    /// compare-and-set as the change itself, so it costs no extra write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<StageChange>,
    /// True for a run executed outside Nexus and registered through the external-runs API
    /// (`POST /algorithm/v1/external/{alg}`). Such a run has no owner and is never queued,
    /// dispatched, launched or claimed by recovery; its stages come from the external engine's
    /// reports. Records written before the field existed read as `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The latest progress the algorithm reported (by any attempt: a relaunched attempt's first
    /// report replaces it). Written in place, without a timeline entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// A run's latest progress report (`POST /algorithm/v1/progress/{alg}/requests/{id}` on the
/// receiver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// How much is done, from 0 to 1, when the algorithm can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// What it is doing (at most [`MAX_PROGRESS_MESSAGE_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was reported.
    pub at: Millis,
}

/// Longest progress message kept, in characters.
pub const MAX_PROGRESS_MESSAGE_CHARS: usize = 512;

/// Most entries a run's timeline keeps (a run re-queued many times keeps its acceptance and
/// its latest changes).
pub const MAX_TIMELINE: usize = 64;

/// Longest cause kept in a timeline entry, in characters.
const MAX_CAUSE_CHARS: usize = 512;

/// One change of a run's stage (or a noted change within a stage: a new owner, a retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageChange {
    /// When (milliseconds since the epoch).
    pub at: Millis,
    /// Stage before.
    pub from: Stage,
    /// Stage after.
    pub to: Stage,
    /// The component that made the change (`scheduler`, `receiver`, `supervisor`, …).
    pub by: String,
    /// Why.
    pub cause: String,
}

/// Who made a change and why, carried by a [`RunPatch`] into the run's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The component.
    pub by: &'static str,
    /// Why.
    pub cause: String,
}

impl Run {
    /// Appends a timeline entry, keeping at most [`MAX_TIMELINE`] (the first entry, the
    /// acceptance, always stays).
    pub fn record(&mut self, change: StageChange) {
        let mut change = change;
        if change.cause.chars().count() > MAX_CAUSE_CHARS {
            change.cause = change.cause.chars().take(MAX_CAUSE_CHARS).collect();
        }
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.remove(1);
        }
        self.timeline.push(change);
    }
}

impl Run {
    /// Returns this run as a parent reference.
    #[must_use]
    pub fn as_ref(&self) -> RunRef {
        RunRef {
            request_id: self.id,
            algorithm_name: self.algorithm.clone(),
        }
    }
}

/// Fields a compare-and-set may change besides the stage. `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPatch {
    /// New owner (`Some(None)` clears it).
    pub owner: Option<Option<String>>,
    /// New attempt count.
    pub attempts: Option<u32>,
    /// New executor handle.
    pub executor_ref: Option<String>,
    /// Result URI reported by the algorithm.
    pub result_uri: Option<String>,
    /// Marks the result as uploaded through Nexus.
    pub result_stored: Option<bool>,
    /// Marks logs as captured.
    pub logs_stored: Option<bool>,
    /// Failure cause.
    pub failure_cause: Option<String>,
    /// Failure details.
    pub failure_details: Option<String>,
    /// Launch time of the current attempt.
    pub started_at: Option<Millis>,
    /// The latest progress report.
    pub progress: Option<Progress>,
    /// Who makes the change and why, for the run's timeline. Stage changes are always recorded
    /// (without a note: by `nexus`, with the failure cause if any); changes within a stage only
    /// with a note.
    pub note: Option<Note>,
}

impl RunPatch {
    /// The patch of a BUFFERED → RUNNING move made by whoever notices first that a run started
    /// (its completion, or its outcome, may arrive before the executor's start event is applied):
    /// at least one attempt, started now. The start event, when it comes later, corrects both.
    #[must_use]
    pub fn started_late(run: &Run, now: Millis) -> Self {
        Self {
            attempts: Some(run.attempts.max(1)),
            started_at: Some(run.started_at.unwrap_or(now)),
            ..Self::default()
        }
    }

    /// Applies the patch to `run`, moving it to `to` and stamping `now`. Sets `finished_at` when
    /// `to` is terminal. The caller has already checked the transition is legal.
    pub fn apply(&self, run: &mut Run, to: Stage, now: Millis) {
        let from = run.stage;
        if from != to || self.note.is_some() {
            let (by, cause) = match &self.note {
                Some(n) => (n.by.to_owned(), n.cause.clone()),
                None => (
                    "nexus".to_owned(),
                    self.failure_cause.clone().unwrap_or_default(),
                ),
            };
            run.record(StageChange {
                at: now,
                from,
                to,
                by,
                cause,
            });
        }
        run.stage = to;
        if let Some(o) = &self.owner {
            run.owner.clone_from(o);
        }
        if let Some(a) = self.attempts {
            run.attempts = a;
        }
        if let Some(e) = &self.executor_ref {
            run.executor_ref = Some(e.clone());
        }
        if let Some(r) = &self.result_uri {
            run.result_uri = Some(r.clone());
        }
        if let Some(r) = self.result_stored {
            run.result_stored = r;
        }
        if let Some(l) = self.logs_stored {
            run.logs_stored = l;
        }
        if let Some(c) = &self.failure_cause {
            run.failure_cause = Some(c.clone());
        }
        if let Some(d) = &self.failure_details {
            run.failure_details = Some(d.clone());
        }
        if let Some(s) = self.started_at {
            run.started_at = Some(s);
        }
        if let Some(p) = &self.progress {
            run.progress = Some(p.clone());
        }
        if to.is_terminal() {
            run.finished_at = Some(now);
        }
        run.last_modified = now;
    }

    /// Returns the patch with a timeline note: the change is made by `by` because of `cause`.
    #[must_use]
    pub fn by(mut self, by: &'static str, cause: impl Into<String>) -> Self {
        self.note = Some(Note {
            by,
            cause: cause.into(),
        });
        self
    }

    /// Returns a patch carrying a failure cause and details.
    #[must_use]
    pub fn failure(cause: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            failure_cause: Some(cause.into()),
            failure_details: Some(details.into()),
            ..Self::default()
        }
    }
}

/// How a cancellation propagates to the run's process or Job (the v1 `cancellationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CancellationPolicy {
    /// Delete the Job now, its pods in the background (default).
    #[default]
    Background,
    /// Delete the pods first, then the Job.
    Foreground,
    /// Delete the Job, leave its pods running.
    Orphan,
}

impl FromStr for CancellationPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            "Orphan" => Ok(Self::Orphan),
            other => Err(format!(
                "invalid CancellationPolicy: '{other}', accepted values: Orphan, Foreground or Background"
            )),
        }
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_stages_are_never_left() {
        for from in Stage::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Stage::ALL {
                assert!(
                    !from.can_transition_to(to),
                    "{from} -> {to} must be illegal"
                );
            }
        }
    }

    #[test]
    fn legal_table() {
        use Stage::*;
        assert!(New.can_transition_to(Buffered));
        assert!(Buffered.can_transition_to(Running));
        assert!(Running.can_transition_to(Completed));
        assert!(Buffered.can_transition_to(SchedulingFailed));
        assert!(Running.can_transition_to(Cancelled));
        assert!(Buffered.can_transition_to(Buffered));
        assert!(!Running.can_transition_to(Buffered));
        // A Job whose container never ran (image pull, unschedulable) ends SCHEDULING_FAILED.
        assert!(Running.can_transition_to(SchedulingFailed));
        assert!(!Buffered.can_transition_to(Completed));
        assert!(!New.can_transition_to(Running));
    }

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(s.as_str().parse::<Stage>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("nope".parse::<Stage>().unwrap_err().contains("BUFFERED"));
    }

    #[test]
    fn the_timeline_records_changes_and_stays_bounded() {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": RunId::new(), "algorithm": "a", "stage": "BUFFERED", "workgroup": "w",
            "shard": "s", "tag": null, "apiVersion": null, "parent": null, "root": RunId::new(),
            "depth": 0, "idempotencyKey": null, "owner": null, "attempts": 0,
            "appliedConfiguration": {}, "configurationOverrides": null,
            "payload": {"kind": "inline", "bytes": ""}, "contentHash": "", "payloadSize": 0,
            "payloadValidFor": "1h", "resultUri": null, "resultStored": false,
            "logsStored": false, "failureCause": null, "failureDetails": null,
            "executorRef": null, "receivedAt": 1, "startedAt": null, "finishedAt": null,
            "lastModified": 1
        }))
        .expect("a record without a timeline (written before it existed) still reads");
        assert!(run.timeline.is_empty());
        // A change within the stage without a note is not recorded; with one it is.
        RunPatch::default().apply(&mut run, Stage::Buffered, 2);
        assert!(run.timeline.is_empty());
        RunPatch::default()
            .by("supervisor", "claimed from a lapsed owner")
            .apply(&mut run, Stage::Buffered, 3);
        RunPatch::default()
            .by("receiver", "process started")
            .apply(&mut run, Stage::Running, 4);
        RunPatch::failure("OOMKilled", "137").apply(&mut run, Stage::Failed, 5);
        let seen: Vec<(Stage, Stage, &str, &str)> = run
            .timeline
            .iter()
            .map(|c| (c.from, c.to, c.by.as_str(), c.cause.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    Stage::Buffered,
                    Stage::Buffered,
                    "supervisor",
                    "claimed from a lapsed owner"
                ),
                (
                    Stage::Buffered,
                    Stage::Running,
                    "receiver",
                    "process started"
                ),
                (Stage::Running, Stage::Failed, "nexus", "OOMKilled"),
            ]
        );
        assert_eq!(run.timeline[1].at, 4);
        // Bounded: the first entry and the newest stay.
        for i in 0..200 {
            run.record(StageChange {
                at: 100 + i,
                from: Stage::Buffered,
                to: Stage::Buffered,
                by: "scheduler".into(),
                cause: "x".repeat(2000),
            });
        }
        assert_eq!(run.timeline.len(), MAX_TIMELINE);
        assert_eq!(run.timeline[0].cause, "claimed from a lapsed owner");
        assert_eq!(run.timeline.last().map(|c| c.at), Some(299));
        assert_eq!(run.timeline.last().map(|c| c.cause.len()), Some(512));
    }

    #[test]
    fn cancellation_policy_message_matches_reference() {
        let e = "Sideways".parse::<CancellationPolicy>().unwrap_err();
        assert_eq!(
            e,
            "invalid CancellationPolicy: 'Sideways', accepted values: Orphan, Foreground or Background"
        );
    }
}
