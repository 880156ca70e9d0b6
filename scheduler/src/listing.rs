//! Listing runs (`GET /algorithm/v1/runs`, gRPC `ListRuns` in pages): the query both APIs
//! share, its validation, the opaque cursor, and the page the caller may read.
//!
//! * Filters (all optional, combined with AND): `algorithm`, `stage`, `tag`, `from`/`to`
//!   (submission time, RFC 3339 or milliseconds since the epoch; `from` inclusive, `to`
//!   exclusive), `parent`, `root`, `shard`. `limit`: 1 to [`MAX_PAGE`], default
//!   [`DEFAULT_PAGE`].
//! * Order: newest first. A page ends with a cursor while more runs may match; a page can be
//!   short, even empty, with a cursor (the store bounds the work of one page, and runs the
//!   caller may not read are left out after the store served them).
//! * Cursor: `1` followed by the 32 hex digits of the position's id. Clients treat it as opaque;
//!   anything else is refused with 400 rather than read as "from the start".
//! * Authorization: only runs the caller may read ([`access::readable`]). A run (calling with
//!   its run token, authentication on) reads only its own subtree, so its listings are confined
//!   to its tree at the store already.

use nexus_model::run::{Millis, Run, RunId, Stage, format_millis};
use nexus_proto::v1::{RunPage, RunProgress, RunSummary};
use nexus_store::listing::{MAX_PAGE, submitted_at};
use nexus_store::{Position, RunFilter};

use crate::Scheduler;
use crate::access::{self, Caller, Refusal};
use crate::admission::check_tag;

/// Page size when the caller names none.
pub const DEFAULT_PAGE: usize = 100;
/// Longest algorithm or shard name accepted in a filter.
const MAX_NAME: usize = 253;

/// A listing request as it arrives (query string or gRPC message), before validation.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Algorithm name.
    pub algorithm: Option<String>,
    /// Stage name.
    pub stage: Option<String>,
    /// Client tag.
    pub tag: Option<String>,
    /// Submitted at or after.
    pub from: Option<String>,
    /// Submitted before.
    pub to: Option<String>,
    /// Parent run id.
    pub parent: Option<String>,
    /// Root run id.
    pub root: Option<String>,
    /// Shard name.
    pub shard: Option<String>,
    /// Page size.
    pub limit: Option<String>,
    /// Cursor of the previous page.
    pub cursor: Option<String>,
}

/// A validated listing request.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// What to list.
    pub filter: RunFilter,
    /// Where to continue.
    pub after: Option<Position>,
    /// Page size.
    pub limit: usize,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn name(field: &str, v: Option<String>) -> Result<Option<String>, String> {
    match nonempty(v) {
        Some(n) if n.chars().count() > MAX_NAME || n.chars().any(char::is_control) => Err(format!(
            "{field}: must be at most {MAX_NAME} characters without control characters"
        )),
        other => Ok(other),
    }
}

fn run_id(field: &str, v: Option<String>) -> Result<Option<RunId>, String> {
    nonempty(v)
        .map(|s| {
            s.parse().map_err(|_| {
                format!(
                    "{field}: '{}' is not a request id (a UUID)",
                    s.escape_default()
                )
            })
        })
        .transpose()
}

/// Parses a time: RFC 3339 (`2026-12-07T06:00:00Z`) or milliseconds since the epoch.
fn time(field: &str, v: Option<String>) -> Result<Option<Millis>, String> {
    let Some(s) = nonempty(v) else {
        return Ok(None);
    };
    if let Ok(ms) = s.parse::<i64>() {
        return if ms >= 0 {
            Ok(Some(ms))
        } else {
            Err(format!(
                "{field}: milliseconds since the epoch cannot be negative, got {ms}"
            ))
        };
    }
    let t = humantime::parse_rfc3339_weak(&s).map_err(|e| {
        format!(
            "{field}: '{}' is not a time: {e}; give RFC 3339 (e.g. 2026-12-07T06:00:00Z) or milliseconds since the epoch",
            s.escape_default()
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{field}: times before 1970 are not accepted"))?
        .as_millis();
    Ok(Some(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Encodes a position as a cursor.
#[must_use]
pub fn encode_cursor(p: Position) -> String {
    format!("1{}", p.0.0.simple())
}

/// Decodes a cursor made by [`encode_cursor`].
///
/// # Errors
/// A message saying the cursor is not one this API gave.
pub fn decode_cursor(c: &str) -> Result<Position, String> {
    let bad = || {
        "cursor: not a cursor returned by this API; pass `nextCursor` of the previous page unchanged, or leave it out to start from the newest run".to_owned()
    };
    let hex = c.strip_prefix('1').ok_or_else(bad)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    hex.parse::<RunId>().map(Position).map_err(|_| bad())
}

impl ListParams {
    /// Validates the request.
    ///
    /// # Errors
    /// The first invalid field, with what is accepted.
    pub fn validate(self) -> Result<Listing, String> {
        let stage = nonempty(self.stage)
            .map(|s| s.parse::<Stage>().map_err(|e| format!("stage: {e}")))
            .transpose()?;
        let tag = nonempty(self.tag);
        if let Some(t) = &tag {
            check_tag(t).map_err(|e| format!("tag: {e}"))?;
        }
        let from = time("from", self.from)?;
        let to = time("to", self.to)?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(format!(
                "from ({}) must be before to ({})",
                format_millis(f),
                format_millis(t)
            ));
        }
        let limit = match nonempty(self.limit) {
            None => DEFAULT_PAGE,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "limit: must be a whole number from 1 to {MAX_PAGE}, got '{}'",
                        l.escape_default()
                    ));
                }
            },
        };
        let after = nonempty(self.cursor)
            .map(|c| decode_cursor(&c))
            .transpose()?;
        Ok(Listing {
            filter: RunFilter {
                algorithm: name("algorithm", self.algorithm)?,
                stage,
                tag,
                from,
                to,
                parent: run_id("parent", self.parent)?,
                root: run_id("root", self.root)?,
                shard: name("shard", self.shard)?,
            },
            after,
            limit,
        })
    }
}

/// One page of runs `caller` may read, and the cursor of the next.
///
/// # Errors
/// Store failures.
pub async fn page(
    s: &Scheduler,
    caller: &Caller,
    mut listing: Listing,
) -> Result<(Vec<Run>, Option<String>), Refusal> {
    // A run reads only its own subtree (authentication on): look in its tree only.
    if let Caller::Run(me) = caller
        && s.auth.enabled()
    {
        match listing.filter.root {
            Some(r) if r != me.root => return Ok((Vec::new(), None)),
            _ => listing.filter.root = Some(me.root),
        }
    }
    let page = s
        .store
        .list(&listing.filter, listing.after, listing.limit)
        .await?;
    let runs = access::readable(s, caller, page.runs).await?;
    Ok((runs, page.next.map(encode_cursor)))
}

/// The summary of `run` served by `GET /algorithm/v1/runs`.
pub async fn summary(s: &Scheduler, run: &Run) -> RunSummary {
    RunSummary {
        request_id: run.id.to_string(),
        algorithm_name: run.algorithm.clone(),
        status: run.stage.to_string(),
        tag: run.tag.clone(),
        parent_request_id: run.parent.as_ref().map(|p| p.request_id.to_string()),
        root_request_id: run.root.to_string(),
        shard: run.shard.clone(),
        workgroup: run.workgroup.clone(),
        attempts: run.attempts,
        submitted_at: format_millis(match submitted_at(run.id) {
            0 => run.received_at,
            t => t,
        }),
        started_at: run.started_at.map(format_millis),
        finished_at: run.finished_at.map(format_millis),
        result_uri: crate::api::result_uri(s, run).await,
        run_error_message: if run.stage.is_terminal() && run.stage != Stage::Completed {
            run.failure_cause.clone().unwrap_or_default()
        } else {
            String::new()
        },
        external: run.external,
        progress: progress(run),
    }
}

/// The run's latest progress report as served (listings and metadata).
pub fn progress(run: &Run) -> Option<RunProgress> {
    run.progress.as_ref().map(|p| RunProgress {
        fraction: p.fraction,
        message: p.message.clone(),
        reported_at: format_millis(p.at),
    })
}

/// The HTTP answer for a page.
pub async fn http_page(s: &Scheduler, runs: Vec<Run>, next: Option<String>) -> RunPage {
    let mut out = Vec::with_capacity(runs.len());
    for r in &runs {
        out.push(summary(s, r).await);
    }
    RunPage {
        runs: out,
        next_cursor: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<Listing, String> {
        let q: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let p: ListParams = serde_urlencoded_like(&q);
        p.validate()
    }

    /// Builds params the way axum's `Query` does for the fields used here.
    fn serde_urlencoded_like(q: &str) -> ListParams {
        let mut p = ListParams::default();
        for pair in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            let v = Some(v.to_owned());
            match k {
                "algorithm" => p.algorithm = v,
                "stage" => p.stage = v,
                "tag" => p.tag = v,
                "from" => p.from = v,
                "to" => p.to = v,
                "parent" => p.parent = v,
                "root" => p.root = v,
                "shard" => p.shard = v,
                "limit" => p.limit = v,
                "cursor" => p.cursor = v,
                other => panic!("unknown {other}"),
            }
        }
        p
    }

    #[test]
    fn a_full_query_validates() {
        let id = RunId::new();
        let l = params(&[
            ("algorithm", "knapsack"),
            ("stage", "running"),
            ("tag", "nightly"),
            ("from", "2026-12-01T00:00:00Z"),
            ("to", "1796169600000"),
            ("root", &id.to_string()),
            ("shard", "gpu"),
            ("limit", "5"),
            ("cursor", &encode_cursor(Position(id))),
        ])
        .unwrap();
        assert_eq!(l.limit, 5);
        assert_eq!(l.after, Some(Position(id)));
        assert_eq!(l.filter.stage, Some(Stage::Running));
        let dec1 = humantime::parse_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert_eq!(l.filter.from, Some(i64::try_from(dec1).unwrap()));
        assert_eq!(l.filter.to, Some(1_796_169_600_000));
        assert_eq!(l.filter.root, Some(id));
        let empty = params(&[]).unwrap();
        assert_eq!(empty.limit, DEFAULT_PAGE);
        assert_eq!(empty.filter, RunFilter::default());
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (
                &[("limit", "0")],
                "limit: must be a whole number from 1 to 1000, got '0'",
            ),
            (&[("limit", "1001")], "from 1 to 1000"),
            (&[("limit", "ten")], "got 'ten'"),
            (
                &[("stage", "DONE")],
                "stage: unknown stage 'DONE': expected one of NEW, BUFFERED",
            ),
            (&[("from", "yesterday")], "from: 'yesterday' is not a time"),
            (
                &[
                    ("from", "2026-12-02T00:00:00Z"),
                    ("to", "2026-12-01T00:00:00Z"),
                ],
                "must be before to",
            ),
            (&[("parent", "42")], "parent: '42' is not a request id"),
            (
                &[("cursor", "abc")],
                "cursor: not a cursor returned by this API",
            ),
        ];
        for (q, want) in cases {
            let e = params(q).unwrap_err();
            assert!(e.contains(want), "{q:?}: {e}");
        }
        let long = "a".repeat(300);
        assert!(
            params(&[("algorithm", &long)])
                .unwrap_err()
                .contains("at most 253")
        );
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let p = Position(RunId::new());
        assert_eq!(decode_cursor(&encode_cursor(p)), Ok(p));
        let c = encode_cursor(p);
        assert!(decode_cursor(&c[1..]).is_err());
        assert!(decode_cursor(&format!("2{}", &c[1..])).is_err());
        assert!(decode_cursor(&format!("{c}0")).is_err());
        assert!(decode_cursor(&c.replace(|ch: char| ch.is_ascii_digit(), "z")).is_err());
    }
}

#[cfg(test)]
mod http_tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use nexus_auth::apikey::{self, ApiKeys};
    use nexus_auth::config::{ApiKeyEntry, ApiKeysConfig};
    use nexus_store::RunStore as _;
    use nexus_store::test_suite::sample_run;
    use tower::ServiceExt as _;

    use crate::SchedulerConfig;
    use crate::admission::tests::scheduler_with_auth;

    /// An API key whose holder may read runs of `knapsack` only.
    fn reader_of_knapsack(key: &str) -> nexus_auth::Authenticator {
        let keys = ApiKeys::load(&ApiKeysConfig {
            keys: vec![ApiKeyEntry {
                name: "viewer".into(),
                sha256: apikey::hash(key),
                groups: vec!["team-a".into()],
            }],
            files: vec![],
        })
        .unwrap();
        let rules =
            serde_yaml::from_str("[{groups: [team-a], actions: [read], algorithms: [knapsack]}]")
                .unwrap();
        nexus_auth::Authenticator::from_parts(keys, None, rules)
    }

    async fn get(
        s: &Arc<crate::Scheduler>,
        key: &str,
        uri: &str,
    ) -> (u16, serde_json::Value, String) {
        let resp = crate::api::router(s.clone())
            .oneshot(
                Request::get(uri)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or_default(),
            text,
        )
    }

    #[tokio::test]
    async fn pages_hold_only_readable_runs_newest_first() {
        let key = apikey::generate();
        let (s, store) = scheduler_with_auth(SchedulerConfig::default(), reader_of_knapsack(&key));
        let mut mine = Vec::new();
        for i in 0..5 {
            let run = sample_run(if i % 2 == 0 { "knapsack" } else { "secret" });
            if run.algorithm == "knapsack" {
                mine.push(run.id.to_string());
            }
            store.insert(run).await.unwrap();
        }
        mine.reverse();
        // Page by page with limit=1: the other algorithm's runs never show, the cursor carries on.
        let mut seen = Vec::new();
        let mut uri = "/algorithm/v1/runs?limit=1".to_owned();
        for _ in 0..20 {
            let (status, page, text) = get(&s, &key, &uri).await;
            assert_eq!(status, 200, "{text}");
            for r in page["runs"].as_array().unwrap() {
                assert_eq!(r["algorithmName"], "knapsack", "{text}");
                assert_eq!(r["status"], "BUFFERED");
                seen.push(r["requestId"].as_str().unwrap().to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(c) => uri = format!("/algorithm/v1/runs?limit=1&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen, mine);
        // A filter the caller may not read gives an empty page, not an error.
        let (status, page, _) = get(&s, &key, "/algorithm/v1/runs?algorithm=secret").await;
        assert_eq!(status, 200);
        assert_eq!(page["runs"].as_array().unwrap().len(), 0);
        // Without credentials: 401, as every read.
        let resp = crate::api::router(s.clone())
            .oneshot(
                Request::get("/algorithm/v1/runs")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }

    #[tokio::test]
    async fn bad_queries_are_400_with_what_is_accepted() {
        let key = apikey::generate();
        let (s, _) = scheduler_with_auth(SchedulerConfig::default(), reader_of_knapsack(&key));
        for (q, want) in [
            ("limit=0", "limit: must be a whole number from 1 to 1000"),
            ("stage=DONE", "stage: unknown stage 'DONE'"),
            ("cursor=xyz", "cursor: not a cursor returned by this API"),
            ("colour=red", "accepted: algorithm, stage, tag"),
            (
                "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
                "must be before to",
            ),
        ] {
            let (status, _, text) = get(&s, &key, &format!("/algorithm/v1/runs?{q}")).await;
            assert_eq!(status, 400, "{q}: {text}");
            assert!(text.contains(want), "{q}: {text}");
        }
    }
}
