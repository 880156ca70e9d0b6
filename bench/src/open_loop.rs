//! Open-loop load: requests leave on a fixed schedule (`rate` per second) whatever the server
//! answers, and each latency is measured from the request's *scheduled* send time, so queueing
//! in the server (or in the load generator itself) shows up instead of being hidden by a client
//! that waits before sending the next request (coordinated omission).
//!
//! At most `max_outstanding` requests are in flight; a request due while the cap is reached is not
//! sent and is counted as dropped. A request sent more than [`LATE`] after its scheduled time is
//! counted as late (the generator fell behind; its latency still counts from the schedule).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::{MAX_REQUESTS, PHASE_LIMIT, f0, ms, pct, print_table};

/// A send this much behind its schedule counts as late.
pub const LATE: Duration = Duration::from_millis(10);

/// What one open-loop phase measured.
#[derive(Debug)]
pub struct OpenLoad {
    /// Row label.
    pub name: String,
    /// Target rate (requests per second).
    pub rate: f64,
    /// Requests sent.
    pub sent: usize,
    /// 202 answers.
    pub ok: usize,
    /// Other answers.
    pub non_202: usize,
    /// Transport errors and timeouts.
    pub errors: usize,
    /// Due but not sent: `max_outstanding` requests were already in flight.
    pub dropped: usize,
    /// Sent more than [`LATE`] after their scheduled time.
    pub late: usize,
    /// From the first scheduled send to the last answer.
    pub elapsed: Duration,
    /// Latencies of the 202 answers from their scheduled send time, sorted.
    pub latencies: Vec<Duration>,
}

impl OpenLoad {
    /// 202 answers per second.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Default)]
struct Shared {
    ok: AtomicUsize,
    non_202: AtomicUsize,
    errors: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
    last_answer: Mutex<Option<Instant>>,
}

/// Sends `rate` POSTs per second of `body` to `url` for `duration`; see the module docs.
///
/// # Errors
/// Arguments out of range, or the HTTP client cannot be built.
pub async fn drive(
    name: &'static str,
    url: String,
    body: Arc<String>,
    rate: f64,
    duration: Duration,
    max_outstanding: usize,
) -> anyhow::Result<OpenLoad> {
    anyhow::ensure!(
        rate.is_finite() && (1.0..=1_000_000.0).contains(&rate),
        "rate must be between 1 and 1000000 requests per second"
    );
    anyhow::ensure!(
        (1..=65_536).contains(&max_outstanding),
        "--max-outstanding must be between 1 and 65536"
    );
    let client = crate::load_client(max_outstanding)?;
    let url = Arc::new(url);
    let duration = duration.min(PHASE_LIMIT);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // bounded above
    let total = ((rate * duration.as_secs_f64()) as usize).min(MAX_REQUESTS);
    let slots = Arc::new(Semaphore::new(max_outstanding));
    let shared = Arc::new(Shared::default());
    let (mut sent, mut dropped, mut late) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let hard_stop = start + PHASE_LIMIT;
    let due = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    let mut i = 0usize;
    while i < total {
        let now = Instant::now();
        if now >= hard_stop {
            break;
        }
        // Everything due by now leaves now (the timer wakes about once a millisecond).
        while i < total && due(i) <= now {
            let scheduled = due(i);
            i += 1;
            if now.duration_since(scheduled) > LATE {
                late += 1;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                dropped += 1;
                continue;
            };
            sent += 1;
            let (client, url, body, shared) =
                (client.clone(), url.clone(), body.clone(), shared.clone());
            tokio::spawn(async move {
                match crate::post_json(&client, &url, &body).await {
                    Ok(status) => {
                        if status == 202 {
                            shared.ok.fetch_add(1, Ordering::Relaxed);
                            shared
                                .latencies
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(scheduled.elapsed());
                        } else {
                            shared.non_202.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let answered = Instant::now();
                let mut last = shared
                    .last_answer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *last = Some(last.map_or(answered, |l| l.max(answered)));
                drop(permit);
            });
        }
        if i < total {
            tokio::time::sleep_until(due(i).into()).await;
        }
    }
    // Wait for the requests in flight (each has a 10 s client timeout; bounded anyway).
    let cap = u32::try_from(max_outstanding).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(15), slots.acquire_many(cap)).await;
    let end = shared
        .last_answer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_else(Instant::now)
        .max(start + duration);
    let mut latencies = std::mem::take(
        &mut *shared
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    latencies.sort_unstable();
    Ok(OpenLoad {
        name: name.to_owned(),
        rate,
        sent,
        ok: shared.ok.load(Ordering::Relaxed),
        non_202: shared.non_202.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        dropped,
        late,
        elapsed: end.duration_since(start),
        latencies,
    })
}

/// Prints open-loop phases as one table.
pub fn print(title: &str, loads: &[OpenLoad]) {
    let rows: Vec<Vec<String>> = loads
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                f0(l.rate),
                format!("{:.1}", l.elapsed.as_secs_f64()),
                l.sent.to_string(),
                l.ok.to_string(),
                f0(l.throughput()),
                ms(pct(&l.latencies, 0.50)),
                ms(pct(&l.latencies, 0.99)),
                ms(pct(&l.latencies, 0.999)),
                l.non_202.to_string(),
                l.errors.to_string(),
                l.dropped.to_string(),
                l.late.to_string(),
            ]
        })
        .collect();
    print_table(
        title,
        &[
            "scenario",
            "target/s",
            "seconds",
            "sent",
            "202s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "non-202",
            "errors",
            "dropped",
            "late",
        ],
        &rows,
    );
    println!(
        "(open loop: latency from the scheduled send time; dropped = due while the outstanding cap was reached; late = sent > {} ms behind schedule)",
        LATE.as_millis()
    );
}
