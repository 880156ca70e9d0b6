//! `GET /algorithm/v1/shards`: the shards as the answering scheduler sees them — each lane's
//! queued runs, dispatch rate and budget, pause after an unreachable shard, runs handed over
//! (two reads give a rate), and the shard's receiver endpoints with their health. The console's
//! shards page reads it.
//!
//! What a caller sees follows the catalog: a principal sees the shards of the algorithms a rule
//! grants it anything on; anonymous callers (authentication off) see every shard this scheduler
//! knows. Runs (algorithms, untrusted code) are refused: the infrastructure is not theirs to map.

use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::time::Instant;

use axum::Extension;
use axum::extract::State;
use nexus_http::ApiError;
use nexus_proto::v1::{LaneState, ReceiverView, ShardView, ShardsView};

use crate::Scheduler;
use crate::access::Caller;
use crate::queue::Lane;

/// The lane of `shard` on this scheduler (`lane`, when it has one) and its dispatch budget.
pub(crate) fn lane_state(
    s: &Scheduler,
    shard: &str,
    lane: Option<&Lane>,
    now: Instant,
) -> LaneState {
    let budget = s.budgets.get(shard);
    let b = budget
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (rate, ceiling, schedulers) = (b.current_rate(), b.ceiling(), b.replicas());
    drop(b);
    LaneState {
        shard: shard.to_owned(),
        length: lane.map_or(0, |l| l.len() as u64),
        shard_down_for_ms: lane
            .and_then(|l| l.paused_until(now))
            .map(|u| millis(u.duration_since(now))),
        rate_per_second: rate,
        ceiling_per_second: ceiling,
        schedulers,
        slowed_down: rate + 1e-9 < ceiling,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The shards `caller` may see, by name: those of the catalog's workgroups whose algorithms it
/// may use, plus (anonymous callers) every lane this scheduler has.
fn visible_shards(s: &Scheduler, caller: &Caller) -> BTreeSet<String> {
    let visible = crate::algorithms::visible(s, caller);
    let mut names: BTreeSet<String> = visible
        .workgroups
        .into_iter()
        .map(|w| w.shard)
        .filter(|n| !n.is_empty())
        .collect();
    if matches!(caller, Caller::Anonymous) {
        names.extend(s.queue.lanes().iter().map(|l| l.name().to_owned()));
    }
    names
}

/// What `caller` sees of the shards now.
#[must_use]
pub fn view(s: &Scheduler, caller: &Caller) -> ShardsView {
    let now = Instant::now();
    let lanes = s.queue.lanes();
    let shards = visible_shards(s, caller)
        .into_iter()
        .map(|name| {
            let lane = lanes.iter().find(|l| l.name() == name);
            let route = s.shards.route(&name);
            let receivers: Vec<ReceiverView> = route
                .as_ref()
                .map(|r| r.receivers())
                .unwrap_or_default()
                .into_iter()
                .map(|r| ReceiverView {
                    endpoint: r.endpoint,
                    up: r.down_for.is_none(),
                    down_for_ms: r.down_for.map(millis),
                })
                .collect();
            ShardView {
                lane: lane_state(s, &name, lane.map(AsRef::as_ref), now),
                handed_over_total: lane.map_or(0, |l| l.handed_over_total()),
                in_process: route.is_some() && receivers.is_empty(),
                receivers,
            }
        })
        .collect();
    ShardsView {
        scheduler: s.instance_id.clone(),
        queued: s.queue.len() as u64,
        queue_bound: s.config.queue_bound as u64,
        shards,
    }
}

/// `GET /algorithm/v1/shards`.
///
/// # Errors
/// 403 for a run's credential.
pub async fn list(
    State(s): State<Arc<Scheduler>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<axum::Json<ShardsView>, ApiError> {
    if matches!(*caller, Caller::Run(_)) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "a run's credential may not read the shards' state; use a person's or a service account's credential",
        ));
    }
    Ok(axum::Json(view(&s, &caller)))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler;

    async fn call(
        s: &std::sync::Arc<crate::Scheduler>,
        req: Request<Body>,
    ) -> (u16, serde_json::Value) {
        let resp = crate::api::router(s.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn shards_show_their_lanes_budgets_and_hand_overs() {
        // No dispatcher runs: an accepted run stays in its shard's lane.
        let (s, _) = scheduler(SchedulerConfig::default());
        let submit = Request::post("/algorithm/v1/run/knapsack")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"algorithmParameters": {"a": 1}}"#))
            .unwrap();
        assert_eq!(call(&s, submit).await.0, 202);
        let (status, v) = call(
            &s,
            Request::get("/algorithm/v1/shards")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["scheduler"], s.instance_id.as_str());
        assert_eq!(v["queued"], 1, "{v}");
        let local = v["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["lane"]["shard"] == "local")
            .cloned()
            .unwrap_or_else(|| panic!("shard local missing: {v}"));
        assert_eq!(local["lane"]["length"], 1, "{v}");
        assert_eq!(local["handedOverTotal"], 0);
        assert_eq!(local["lane"]["slowedDown"], false);
        assert!(local["lane"]["ceilingPerSecond"].as_f64().unwrap() > 0.0);
        assert!(local["receivers"].as_array().unwrap().is_empty());
    }
}
