//! A run's timeline and "why is my run waiting?" (`GET /algorithm/v1/timeline/...` and
//! `GET /algorithm/v1/explain/...`).
//!
//! The timeline is the run record's own (every stage change, with its time, component and
//! cause, written by the change's compare-and-set). The explanation adds what the scheduler that
//! answers knows right now: the run's place in its shard's lane, the lane's state (paused while
//! the shard is unreachable, the dispatch rate, slowed down after the shard said "slow down"),
//! that it was handed to its shard and waits there (for the receiver's launch limiter or a slot
//! of its workgroup), and the workgroup's concurrency limit. A run queued by *another*
//! scheduler (its owner) is only described from its record: the queue is that scheduler's
//! memory; the answer says so.

use std::time::Duration;

use nexus_model::run::{Run, Stage, StageChange, format_millis, now_millis};
use nexus_proto::v1::{QueuePlace, RunExplanation, RunTimeline, TimelineEntry};
use tokio::time::Instant;

use crate::Scheduler;
use crate::queue::Part;

fn entry(c: &StageChange) -> TimelineEntry {
    TimelineEntry {
        at: format_millis(c.at),
        from: c.from.to_string(),
        to: c.to.to_string(),
        by: c.by.clone(),
        cause: c.cause.clone(),
    }
}

/// The run's timeline.
#[must_use]
pub fn timeline(run: &Run) -> RunTimeline {
    RunTimeline {
        request_id: run.id.to_string(),
        algorithm_name: run.algorithm.clone(),
        status: run.stage.to_string(),
        timeline: run.timeline.iter().map(entry).collect(),
    }
}

/// `d` as `1h2m3s` (whole seconds; milliseconds under a second).
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Longest wait for the shard's answer (each gRPC receiver is bounded too).
const SHARD_TIMEOUT: Duration = Duration::from_secs(3);

/// What `run` is doing and why: this scheduler's view ([`explain_here`]) plus, while the run
/// has not finished, what its shard's receivers say.
pub async fn explain(s: &Scheduler, run: &Run) -> RunExplanation {
    let mut e = explain_here(s, run);
    if !run.stage.is_terminal()
        && let Some(shard) = s.shards.route(&run.shard)
    {
        e.shard_facts = match tokio::time::timeout(SHARD_TIMEOUT, shard.describe(run.id)).await {
            Ok(facts) => facts,
            Err(_) => vec![format!(
                "shard '{}' did not answer within {SHARD_TIMEOUT:?}",
                run.shard
            )],
        };
    }
    e
}

/// What `run` is doing and why, as far as this scheduler knows.
pub fn explain_here(s: &Scheduler, run: &Run) -> RunExplanation {
    let now = Instant::now();
    let since = run
        .timeline
        .iter()
        .rev()
        .find(|c| c.to == run.stage && c.from != c.to)
        .map(|c| c.at)
        .or(match run.stage {
            Stage::New | Stage::Buffered => Some(run.received_at),
            Stage::Running => run.started_at,
            _ => run.finished_at,
        });
    let for_how_long = since
        .map(|t| {
            human(Duration::from_millis(
                u64::try_from(now_millis() - t).unwrap_or(0),
            ))
        })
        .unwrap_or_default();
    let mut reasons = Vec::new();
    let mut queue = None;
    let wg_limit = s
        .catalog
        .snapshot()
        .workgroups
        .get(&run.workgroup)
        .and_then(|w| w.spec.max_concurrent_runs);
    let lane = s.queue.lanes().into_iter().find(|l| l.name() == run.shard);
    let lane_state = (!run.stage.is_terminal())
        .then(|| crate::shards::lane_state(s, &run.shard, lane.as_deref(), now));
    let summary = match run.stage {
        Stage::New | Stage::Buffered => {
            let place = lane.as_ref().and_then(|l| l.place(run.id));
            if let Some(p) = place {
                let position = p.ahead as u64 + 1;
                let part = match p.part {
                    Part::Priority => "priority",
                    Part::Fifo => "queue",
                    Part::Retry => "retry",
                };
                let retry_in = p.due.map(|d| d.saturating_duration_since(now));
                queue = Some(QueuePlace {
                    scheduler: s.instance_id.clone(),
                    shard: run.shard.clone(),
                    part: part.to_owned(),
                    position,
                    lane_length: p.lane_len as u64,
                    attempt: p.attempt,
                    retry_in_ms: retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                });
                match retry_in {
                    Some(d) => format!(
                        "waiting {for_how_long} in the queue of shard '{}': dispatch attempt {} failed, the next is due in {}",
                        run.shard,
                        p.attempt,
                        human(d)
                    ),
                    None => format!(
                        "waiting {for_how_long} in the queue of shard '{}' on scheduler {}: {} of {} to be dispatched",
                        run.shard,
                        s.instance_id,
                        ordinal(position),
                        p.lane_len
                    ),
                }
            } else if let Some(at) = s.handed_over_at(run.id) {
                format!(
                    "handed to shard '{}' {} ago; it waits there to start: for the receiver's launch limiter, or for a slot of workgroup '{}'{}",
                    run.shard,
                    human(at.elapsed()),
                    run.workgroup,
                    wg_limit.map_or_else(String::new, |n| format!(
                        " (at most {n} at once per receiver)"
                    ))
                )
            } else if run.owner.as_deref().is_some_and(|o| o != s.instance_id) {
                format!(
                    "waiting {for_how_long} in the queue of scheduler {} (its owner); this answer came from scheduler {}, which cannot see that queue: ask again to reach it, or see the lane below for this scheduler's view of shard '{}'",
                    run.owner.as_deref().unwrap_or_default(),
                    s.instance_id,
                    run.shard
                )
            } else if run.owner.is_none() {
                format!(
                    "waiting {for_how_long} without an owner: the supervisor hands it to a scheduler's queue on its next recovery pass"
                )
            } else {
                format!(
                    "waiting {for_how_long}: being dispatched to shard '{}' now",
                    run.shard
                )
            }
        }
        Stage::Running => format!(
            "running {for_how_long} on shard '{}' (attempt {}, {})",
            run.shard,
            run.attempts.max(1),
            run.executor_ref
                .as_deref()
                .unwrap_or("executor handle not recorded yet")
        ),
        Stage::Completed => format!("completed {for_how_long} ago"),
        other => format!(
            "{other} {for_how_long} ago: {}",
            run.failure_cause.as_deref().unwrap_or("no cause recorded")
        ),
    };
    if let Some(l) = &lane_state {
        if let Some(ms) = l.shard_down_for_ms {
            reasons.push(format!(
                "shard '{}' did not answer: its lane on this scheduler is paused for {} more",
                l.shard,
                human(Duration::from_millis(ms))
            ));
        }
        if l.slowed_down {
            reasons.push(format!(
                "shard '{}' said \"slow down\": this scheduler dispatches {:.2} runs/s to it, climbing back to {:.2}/s",
                l.shard, l.rate_per_second, l.ceiling_per_second
            ));
        } else if !run.stage.is_terminal() {
            reasons.push(format!(
                "dispatch budget toward shard '{}': {:.2} runs/s for this scheduler ({} scheduler(s) share it)",
                l.shard, l.ceiling_per_second, l.schedulers
            ));
        }
        if l.length > 0 {
            reasons.push(format!(
                "{} run(s) wait in the lane of shard '{}' on this scheduler",
                l.length, l.shard
            ));
        }
    }
    if let Some(n) = wg_limit
        && !run.stage.is_terminal()
    {
        reasons.push(format!(
            "workgroup '{}' runs at most {n} run(s) at once per receiver; more wait BUFFERED there",
            run.workgroup
        ));
    }
    if !run.stage.is_terminal()
        && let Some(p) = &run.progress
    {
        let done = p
            .fraction
            .map(|f| format!(" {:.0}%", f * 100.0))
            .unwrap_or_default();
        let said = p
            .message
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        reasons.push(format!(
            "the algorithm reported{done}{said} at {}",
            format_millis(p.at)
        ));
    }
    if let Some(c) = run.timeline.last() {
        reasons.push(format!(
            "last change: {} -> {} by {} at {}{}",
            c.from,
            c.to,
            c.by,
            format_millis(c.at),
            if c.cause.is_empty() {
                String::new()
            } else {
                format!(": {}", c.cause)
            }
        ));
    }
    if run.stage.is_terminal()
        && let Some(d) = run.failure_details.as_deref().filter(|d| !d.is_empty())
    {
        reasons.push(format!("details: {d}"));
    }
    RunExplanation {
        request_id: run.id.to_string(),
        algorithm_name: run.algorithm.clone(),
        status: run.stage.to_string(),
        since: since.map(format_millis),
        summary,
        reasons,
        queue,
        lane: lane_state,
        shard_facts: Vec::new(),
        workgroup_max_concurrent_runs: wg_limit,
        timeline: run.timeline.iter().map(entry).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_and_durations_read_naturally() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .map(ordinal)
            .to_vec();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(61_500)), "1m 1s");
    }
}

#[cfg(test)]
mod http_tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler;

    async fn get(s: &std::sync::Arc<crate::Scheduler>, uri: &str) -> (u16, serde_json::Value) {
        let resp = crate::api::router(s.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    async fn submit(s: &std::sync::Arc<crate::Scheduler>) -> String {
        let resp = crate::api::router(s.clone())
            .oneshot(
                Request::post("/algorithm/v1/run/knapsack")
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"algorithmParameters": {"a": 1}}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["requestId"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_queued_run_says_where_it_waits_and_its_timeline_starts_at_acceptance() {
        // No dispatcher runs: accepted runs stay in the queue.
        let (s, _) = scheduler(SchedulerConfig::default());
        let first = submit(&s).await;
        let second = submit(&s).await;
        let (status, t) = get(
            &s,
            &format!("/algorithm/v1/timeline/knapsack/requests/{second}"),
        )
        .await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["status"], "BUFFERED");
        let entries = t["timeline"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{t}");
        assert_eq!(entries[0]["from"], "NEW");
        assert_eq!(entries[0]["to"], "BUFFERED");
        assert_eq!(entries[0]["by"], "scheduler");
        assert!(
            entries[0]["cause"]
                .as_str()
                .unwrap()
                .starts_with("accepted by"),
            "{t}"
        );

        let (status, e) = get(
            &s,
            &format!("/algorithm/v1/explain/knapsack/requests/{second}"),
        )
        .await;
        assert_eq!(status, 200, "{e}");
        assert_eq!(e["queue"]["position"], 2, "{e}");
        assert_eq!(e["queue"]["laneLength"], 2, "{e}");
        assert_eq!(e["queue"]["part"], "queue");
        let summary = e["summary"].as_str().unwrap();
        assert!(summary.contains("2nd of 2 to be dispatched"), "{summary}");
        assert!(summary.contains("shard 'local'"), "{summary}");
        assert_eq!(e["lane"]["shard"], "local");
        assert_eq!(e["lane"]["slowedDown"], false);
        let reasons: Vec<&str> = e["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("dispatch budget toward shard 'local'")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("last change: NEW -> BUFFERED by scheduler")),
            "{reasons:?}"
        );

        let (_, e) = get(
            &s,
            &format!("/algorithm/v1/explain/knapsack/requests/{first}"),
        )
        .await;
        assert_eq!(e["queue"]["position"], 1, "{e}");

        // A progress report (as the receiver records it) shows among the reasons and in the
        // metadata and listing.
        let rid: nexus_model::run::RunId = second.parse().unwrap();
        let patch = nexus_model::run::RunPatch {
            progress: Some(nexus_model::run::Progress {
                fraction: Some(0.4),
                message: Some("epoch 4 of 10".into()),
                at: 1_700_000_000_000,
            }),
            ..Default::default()
        };
        s.store
            .transition(
                rid,
                nexus_model::run::Stage::Buffered,
                nexus_model::run::Stage::Buffered,
                patch,
            )
            .await
            .unwrap();
        let (_, e) = get(
            &s,
            &format!("/algorithm/v1/explain/knapsack/requests/{second}"),
        )
        .await;
        assert!(
            e["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r
                    == "the algorithm reported 40% (epoch 4 of 10) at 2023-11-14T22:13:20.000Z"),
            "{e}"
        );
        let (_, m) = get(
            &s,
            &format!("/algorithm/v1/metadata/knapsack/requests/{second}"),
        )
        .await;
        assert_eq!(
            m["progress"],
            serde_json::json!({"fraction": 0.4, "message": "epoch 4 of 10", "reported_at": "2023-11-14T22:13:20.000Z"})
        );
        let (_, page) = get(&s, "/algorithm/v1/runs?algorithm=knapsack").await;
        let listed = page["runs"].as_array().unwrap();
        let row = listed
            .iter()
            .find(|r| r["requestId"] == second.as_str())
            .unwrap();
        assert_eq!(
            row["progress"]["reportedAt"], "2023-11-14T22:13:20.000Z",
            "{row}"
        );
        assert!(
            listed
                .iter()
                .find(|r| r["requestId"] == first.as_str())
                .unwrap()["progress"]
                .is_null()
        );

        // Unknown runs and algorithms: 404, as every per-run read.
        let (status, _) = get(&s, &format!("/algorithm/v1/explain/other/requests/{first}")).await;
        assert_eq!(status, 404);
        let (status, _) = get(&s, "/algorithm/v1/timeline/knapsack/requests/not-a-uuid").await;
        assert_eq!(status, 400);
    }
}
