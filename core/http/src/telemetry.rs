//! Metrics every component shares: its HTTP requests ([`track`]) and the process itself
//! ([`process_metrics`]).
//!
//! HTTP requests are counted under the component's own prefix
//! (`nexus_scheduler_http_requests_total`, `nexus_receiver_http_…`) with bounded labels: the
//! route *template* (`/algorithm/v1/results/{alg}/requests/{id}`, never a run id or a token),
//! the method (the standard ones, else `other`) and the status. Latency is a histogram up to the
//! answer's head (a followed log streams on after it).
//!
//! Process metrics follow the names of the Prometheus client libraries (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …), read from `/proc/self` when `/metrics` is scraped, so they
//! are there from the first scrape after a start.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// `{prefix}_http_requests_total`.
fn requests_name(prefix: &str) -> String {
    format!("{prefix}_http_requests_total")
}

/// `{prefix}_http_request_duration_seconds`.
fn duration_name(prefix: &str) -> String {
    format!("{prefix}_http_request_duration_seconds")
}

/// Declares the HTTP metrics of the component named by `prefix` (e.g. `nexus_scheduler`).
pub fn describe_http(prefix: &'static str) {
    metrics::describe_counter!(
        requests_name(prefix),
        "HTTP requests answered, by route template, method and status."
    );
    metrics::describe_histogram!(
        duration_name(prefix),
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer's head, by route template and method."
    );
}

/// `router` with every request counted and timed under `prefix` (see the module's text).
pub fn track(prefix: &'static str, router: Router) -> Router {
    describe_http(prefix);
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| observe(prefix, req, next),
    ))
}

async fn observe(prefix: &'static str, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let status = resp.status().as_str().to_owned();
    metrics::counter!(requests_name(prefix), "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(duration_name(prefix), "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The method as a label: the standard ones by name, anything else `other` (bounded).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The process's own metrics in the Prometheus text format, read now from `/proc/self`
/// (Linux; elsewhere nothing). Appended to the exporter's output by the `/metrics` route.
#[must_use]
pub fn process_metrics() -> String {
    let Some(p) = ProcessStats::read() else {
        return String::new();
    };
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    put(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    put(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    put(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    put(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
    put(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        p.threads,
    );
    put(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        put(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    out
}

/// What [`process_metrics`] reports.
#[derive(Debug, Clone, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    threads: f64,
    open_fds: f64,
    max_fds: Option<f64>,
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every Linux ABI Nexus
/// runs on).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        #[allow(clippy::cast_precision_loss)] // a count of descriptors fits an f64
        Self::parse(&stat, &status, &boot, &limits, open_fds as f64)
    }

    /// Parses `/proc/self/stat` (fields after the command, which may hold spaces and
    /// parentheses), `/proc/self/status` (memory in kB, so no page size is assumed), the `btime`
    /// line of `/proc/stat` and `/proc/self/limits`.
    fn parse(
        stat: &str,
        status: &str,
        proc_stat: &str,
        limits: &str,
        open_fds: f64,
    ) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // Fields from 3 (state) on; the field numbers of proc(5) minus 3 index into them.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |n: usize| -> Option<f64> { f.get(n - 3)?.parse::<f64>().ok() };
        let btime = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        let kib = |key: &str| -> Option<f64> {
            let v = status.lines().find_map(|l| l.strip_prefix(key))?;
            Some(v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()? * 1024.0)
        };
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok());
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) / TICKS_PER_SECOND,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            start_time_seconds: btime + num(22)? / TICKS_PER_SECOND,
            threads: num(20)?,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        // A command with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (nexus (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0";
        let proc_stat = "cpu  1 2 3\nbtime 1796640000\nprocesses 9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n";
        let status = "Name:\tnexus\nVmSize:\t  102400 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let p = ProcessStats::parse(stat, status, proc_stat, limits, 12.0).expect("parses");
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 10_485_760.0,
                virtual_bytes: 104_857_600.0,
                start_time_seconds: 1_796_640_000.0 + 1234.56,
                threads: 9.0,
                open_fds: 12.0,
                max_fds: Some(1024.0),
            }
        );
        assert!(ProcessStats::parse("garbage", status, proc_stat, limits, 0.0).is_none());
    }

    #[test]
    fn this_process_is_reported() {
        let text = process_metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("rss value");
        assert!(rss > 1_000_000.0, "rss {rss}");
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").expect("method")),
            "other"
        );
    }
}
