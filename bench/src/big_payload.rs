//! `big-payload`: one large payload through submit → algorithm → result, with the server's
//! resident memory measured.
//!
//! Starts the release `nexus` binary (next to this one: `cargo build --release -p nexus-cli -p
//! nexus-examples` first) as a child process with the given `--payloads` (and `--store`), posts
//! `{"algorithmParameters": {"mode": "digest", "blob": "xxxx…"}}` of the requested size with a
//! streaming request body, waits for the `chaos` demo algorithm (mode `digest`) to complete, reads
//! its result through the result URL and checks that the algorithm saw exactly the payload's
//! bytes (size and SHA-256). The server's peak resident set (`VmHWM`) is read from
//! `/proc/<pid>/status` before the submission and after the result is read.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use sha2::Digest as _;

use crate::print_table;

/// What one big-payload run measured.
#[derive(Debug)]
pub struct BigRun {
    pub payloads: String,
    pub payload_bytes: u64,
    pub rss_before_kib: u64,
    pub peak_kib: u64,
    pub accept: Duration,
    pub complete: Duration,
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("no directory for the bench binary")
}

/// Writes the payload value to `path` and returns (its size, its SHA-256 in hex).
fn write_payload(path: &Path, mib: u64) -> anyhow::Result<(u64, String)> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hash = sha2::Sha256::new();
    let chunk = vec![b'x'; 1024 * 1024];
    let parts = std::iter::once(&br#"{"mode": "digest", "blob": ""#[..])
        .chain((0..mib).map(|_| chunk.as_slice()))
        .chain(std::iter::once(&br#""}"#[..]));
    for b in parts {
        hash.update(b);
        f.write_all(b)?;
    }
    f.flush()?;
    let size = std::fs::metadata(path)?.len();
    Ok((size, crate::hex(&hash.finalize())))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the scenario; see the module docs.
pub async fn run(payloads: &str, store: Option<&str>, mib: u64) -> anyhow::Result<BigRun> {
    anyhow::ensure!(
        (1..=4096).contains(&mib),
        "--mib must be between 1 and 4096"
    );
    let dir = tempfile::tempdir()?;
    let payload_path = dir.path().join("payload.json");
    eprintln!("big-payload: writing a {mib} MiB payload …");
    let (size, sha) = write_payload(&payload_path, mib)?;
    let bins = bin_dir()?;
    let nexus = bins.join("nexus");
    anyhow::ensure!(
        nexus.is_file() && bins.join("nexus-demo").is_file(),
        "{} or nexus-demo is missing: run `cargo build --release -p nexus-cli -p nexus-examples` first",
        nexus.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates");
    let mut cmd = Command::new(&nexus);
    cmd.args(["standalone", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--templates")
        .arg(&templates)
        .arg(format!("--payloads={payloads}"))
        .env(
            "NEXUS__SCHEDULER__MAX_REQUEST_BYTES",
            (size + 4096).to_string(),
        )
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(s) = store {
        cmd.arg(format!("--store={s}"));
    }
    let server = Server(cmd.spawn().context("cannot start nexus")?);
    let pid = server.0.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let ready = Instant::now();
    loop {
        if http
            .get(format!("{base}/health/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "nexus did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_before_kib = status_kib(pid, "VmRSS:")?;
    // The request body streams from disk: `{"algorithmParameters": ` + the file + `}`.
    let head = bytes::Bytes::from_static(b"{\"algorithmParameters\": ");
    let tail = bytes::Bytes::from_static(b"}");
    let file = tokio::fs::File::open(&payload_path).await?;
    let body_len = head.len() as u64 + size + tail.len() as u64;
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(head)])
        .chain(tokio_util::io::ReaderStream::with_capacity(
            file,
            1024 * 1024,
        ))
        .chain(futures::stream::iter([Ok(tail)]));
    eprintln!("big-payload: submitting {size} bytes to {base} (payloads: {payloads}) …");
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/algorithm/v1/run/chaos"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_LENGTH, body_len)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.as_u16() == 202, "submit answered {status}: {text}");
    let accept = t0.elapsed();
    let id = serde_json::from_str::<serde_json::Value>(&text)?["requestId"]
        .as_str()
        .context("no requestId")?
        .to_owned();
    let result_uri = loop {
        let r: serde_json::Value = http
            .get(format!("{base}/algorithm/v1/results/chaos/requests/{id}"))
            .send()
            .await?
            .json()
            .await?;
        match r["status"].as_str() {
            Some("COMPLETED") => break r["resultUri"].as_str().unwrap_or_default().to_owned(),
            Some("FAILED" | "SCHEDULING_FAILED" | "DEADLINE_EXCEEDED" | "CANCELLED") => {
                anyhow::bail!("the run ended {r}")
            }
            _ => {}
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "the run did not complete in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let complete = t0.elapsed();
    let result: serde_json::Value = http.get(&result_uri).send().await?.json().await?;
    anyhow::ensure!(
        result["bytes"].as_u64() == Some(size) && result["sha256"].as_str() == Some(sha.as_str()),
        "the algorithm saw {result}, expected {size} bytes with SHA-256 {sha}"
    );
    let peak_kib = status_kib(pid, "VmHWM:")?;
    drop(server);
    Ok(BigRun {
        payloads: if payloads.starts_with("s3") {
            "S3".into()
        } else {
            payloads.to_owned()
        },
        payload_bytes: size,
        rss_before_kib,
        peak_kib,
        accept,
        complete,
    })
}

/// Prints the runs.
pub fn print(runs: &[BigRun]) {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.payloads.clone(),
                format!("{:.1}", r.payload_bytes as f64 / 1048576.0),
                format!("{:.1}", r.rss_before_kib as f64 / 1024.0),
                format!("{:.1}", r.peak_kib as f64 / 1024.0),
                format!("{:.2}", r.peak_kib as f64 * 1024.0 / r.payload_bytes as f64),
                format!("{:.2}", r.accept.as_secs_f64()),
                format!("{:.2}", r.complete.as_secs_f64()),
            ]
        })
        .collect();
    print_table(
        "one large payload: submit → algorithm → result (server = nexus standalone child process)",
        &[
            "payloads",
            "payload MiB",
            "RSS before MiB",
            "peak RSS MiB",
            "peak / payload",
            "accept s",
            "completed s",
        ],
        &rows,
    );
}
