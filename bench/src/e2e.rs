//! `e2e`: the whole pipeline with an in-process algorithm. Closed-loop clients each submit a run,
//! wait for it with `GET /algorithm/v1/results/{alg}/requests/{id}` until it is COMPLETED, fetch
//! the result through the returned signed URL and check its content. Two ways to wait
//! ([`Wait`]): polling (back-off 1 ms doubling to 20 ms), as a client of the Go API does, or one
//! long poll (`?wait=10s`, answered when the run ends). The
//! standalone under test uses [`crate::instant::InstantExecutor`], which uploads the result and
//! reports completion over HTTP as an algorithm does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nexus_proto::v1::{RequestResult, RunCreated};

use crate::{MAX_REQUESTS, PHASE_LIMIT, f0, ms, pct, print_table};

/// A run not COMPLETED this long after its submission counts as timed out.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest wait between two status polls.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// How a client waits for its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Status reads with a back-off ([`POLL_FIRST`] doubling to [`POLL_MAX`]).
    Poll,
    /// `?wait=10s`: one read, answered when the run ends.
    LongPoll,
}

impl Wait {
    /// How the table names it.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Wait::Poll => "polling",
            Wait::LongPoll => "long poll (?wait=)",
        }
    }
}

/// What the `e2e` phase measured.
#[derive(Debug, Default)]
pub struct E2e {
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Runs submitted, completed and whose result was read back intact.
    pub ok: usize,
    /// Runs that ended in a stage other than COMPLETED.
    pub failed: usize,
    /// Runs not completed within [`RUN_TIMEOUT`].
    pub timeouts: usize,
    /// Results whose content was not what the algorithm uploaded.
    pub bad_result: usize,
    /// Transport errors and unexpected answers (submit, poll or result read).
    pub errors: usize,
    /// Status polls made.
    pub polls: usize,
    /// From the start to the last client's end.
    pub elapsed: Duration,
    /// Submit → result read, of the `ok` runs, sorted.
    pub latencies: Vec<Duration>,
    /// The same runs' parts, each sorted: the `POST /run` answer, then until the poll saw
    /// COMPLETED, then the result read.
    pub parts: [Vec<Duration>; 3],
}

impl E2e {
    /// Completed-and-read runs per second.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum One {
    Ok([Duration; 3], usize),
    Failed(usize),
    Timeout(usize),
    BadResult(usize),
    Error(usize),
}

async fn one(client: &reqwest::Client, base: &str, alg: &str, body: &str, how: Wait) -> One {
    let t0 = Instant::now();
    let created = client
        .post(format!("{base}/algorithm/v1/run/{alg}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await;
    let id = match created {
        Ok(r) if r.status().as_u16() == 202 => match r.json::<RunCreated>().await {
            Ok(c) => c.request_id,
            Err(_) => return One::Error(0),
        },
        _ => return One::Error(0),
    };
    let submitted = t0.elapsed();
    let status_url = match how {
        Wait::Poll => format!("{base}/algorithm/v1/results/{alg}/requests/{id}"),
        Wait::LongPoll => format!("{base}/algorithm/v1/results/{alg}/requests/{id}?wait=10s"),
    };
    let mut wait = POLL_FIRST;
    let mut polls = 0usize;
    let uri = loop {
        if t0.elapsed() > RUN_TIMEOUT {
            return One::Timeout(polls);
        }
        polls += 1;
        let r = match client.get(&status_url).send().await {
            Ok(r) if r.status().is_success() => r.json::<RequestResult>().await,
            _ => return One::Error(polls),
        };
        match r {
            Ok(res) if res.status == "COMPLETED" => break res.result_uri,
            Ok(res)
                if matches!(
                    res.status.as_str(),
                    "FAILED" | "SCHEDULING_FAILED" | "DEADLINE_EXCEEDED" | "CANCELLED"
                ) =>
            {
                return One::Failed(polls);
            }
            Ok(_) if how == Wait::LongPoll => continue,
            Ok(_) => {}
            Err(_) => return One::Error(polls),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(POLL_MAX);
    };
    let completed = t0.elapsed();
    let bytes = match client.get(&uri).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await,
        _ => return One::Error(polls),
    };
    match bytes {
        Ok(b) if b.as_ref() == crate::instant::result_body(&id).as_bytes() => {
            let total = t0.elapsed();
            One::Ok([submitted, completed - submitted, total - completed], polls)
        }
        Ok(_) => One::BadResult(polls),
        Err(_) => One::Error(polls),
    }
}

/// Runs `concurrency` closed-loop clients against `base` (e.g. `http://127.0.0.1:8090`) for
/// `duration`; see the module docs.
///
/// # Errors
/// Arguments out of range, or the HTTP client cannot be built.
pub async fn drive(
    base: &str,
    alg: &str,
    concurrency: usize,
    duration: Duration,
    how: Wait,
) -> anyhow::Result<E2e> {
    anyhow::ensure!(
        (1..=4096).contains(&concurrency),
        "--concurrency must be between 1 and 4096"
    );
    let client = crate::load_client(concurrency * 2)?;
    let body = Arc::new(crate::accept_body());
    let (base, alg) = (Arc::new(base.to_owned()), Arc::new(alg.to_owned()));
    let started = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration.min(PHASE_LIMIT);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, body, base, alg, started) = (
            client.clone(),
            body.clone(),
            base.clone(),
            alg.clone(),
            started.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = E2e::default();
            while Instant::now() < deadline
                && started.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
            {
                match one(&client, &base, &alg, &body, how).await {
                    One::Ok(parts, p) => {
                        r.ok += 1;
                        r.polls += p;
                        r.latencies.push(parts.iter().sum());
                        for (all, part) in r.parts.iter_mut().zip(parts) {
                            all.push(part);
                        }
                    }
                    One::Failed(p) => {
                        r.failed += 1;
                        r.polls += p;
                    }
                    One::Timeout(p) => {
                        r.timeouts += 1;
                        r.polls += p;
                    }
                    One::BadResult(p) => {
                        r.bad_result += 1;
                        r.polls += p;
                    }
                    One::Error(p) => {
                        r.errors += 1;
                        r.polls += p;
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            r
        }));
    }
    let mut all = E2e {
        concurrency,
        ..E2e::default()
    };
    for t in tasks {
        all = merge(all, t.await.expect("e2e client task panicked"));
    }
    all.concurrency = concurrency;
    all.elapsed = start.elapsed();
    all.latencies.sort_unstable();
    for part in &mut all.parts {
        part.sort_unstable();
    }
    Ok(all)
}

/// Adds up two measurements of the same period (clients, counts, samples; the longer elapsed).
#[must_use]
pub fn merge(mut all: E2e, r: E2e) -> E2e {
    all.concurrency += r.concurrency;
    all.ok += r.ok;
    all.failed += r.failed;
    all.timeouts += r.timeouts;
    all.bad_result += r.bad_result;
    all.errors += r.errors;
    all.polls += r.polls;
    all.elapsed = all.elapsed.max(r.elapsed);
    all.latencies.extend(r.latencies);
    all.latencies.sort_unstable();
    for (a, part) in all.parts.iter_mut().zip(r.parts) {
        a.extend(part);
        a.sort_unstable();
    }
    all
}

/// Prints the `e2e` table.
pub fn print(r: &E2e) {
    print_labeled(r, "e2e (standalone nexus)");
}

/// Prints the `e2e` table with `label` naming the set-up.
pub fn print_labeled(r: &E2e, label: &str) {
    print_table(
        "e2e (submit → COMPLETED → result read, instant in-process algorithm)",
        &[
            "scenario",
            "conc",
            "seconds",
            "completed",
            "completions/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "polls/run",
            "failed",
            "timeouts",
            "bad result",
            "errors",
        ],
        &[vec![
            label.into(),
            r.concurrency.to_string(),
            format!("{:.1}", r.elapsed.as_secs_f64()),
            r.ok.to_string(),
            f0(r.throughput()),
            ms(pct(&r.latencies, 0.50)),
            ms(pct(&r.latencies, 0.99)),
            ms(pct(&r.latencies, 0.999)),
            format!(
                "{:.1}",
                r.polls as f64 / (r.ok + r.failed + r.timeouts + r.bad_result).max(1) as f64
            ),
            r.failed.to_string(),
            r.timeouts.to_string(),
            r.bad_result.to_string(),
            r.errors.to_string(),
        ]],
    );
    let [submit, wait, read] = &r.parts;
    println!(
        "e2e parts, p50 / p99 ms: POST /run {} / {}; until COMPLETED seen {} / {}; result read {} / {}",
        ms(pct(submit, 0.5)),
        ms(pct(submit, 0.99)),
        ms(pct(wait, 0.5)),
        ms(pct(wait, 0.99)),
        ms(pct(read, 0.5)),
        ms(pct(read, 0.99)),
    );
}
