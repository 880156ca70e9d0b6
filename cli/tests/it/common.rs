//! Shared helpers of the standalone end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_cli::config::StandaloneConfig;
use nexus_cli::standalone::{Handle, start};

/// Returns target/<profile>, where cargo puts the `nexus` and `nexus-demo` binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..")
        .to_path_buf()
}

/// Returns the directory holding `nexus-demo`, building it first unless it is newer than every
/// source of the workspace. `cargo test --workspace` builds it (for nexus-examples' own tests), so
/// the usual run finds it fresh; a `cargo build -p nexus-examples` there would resolve features
/// for that package alone and rebuild most dependencies. After an edit, or when only this
/// package's tests were built, it is built here (a stale demo would otherwise be used).
pub fn demo_dir() -> PathBuf {
    let dir = bin_dir();
    let demo = dir.join("nexus-demo");
    if !built_after_sources(&demo) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "nexus-examples", "--bin", "nexus-demo"])
            .status()
            .expect("run cargo build for the demo algorithm");
        assert!(st.success(), "building nexus-demo failed");
    }
    assert!(demo.exists(), "nexus-demo not found in {}", dir.display());
    dir
}

/// Whether `bin` exists and was written after every `*.rs`, `*.proto`, `Cargo.toml` and
/// `Cargo.lock` of the workspace (build outputs, hidden directories and fuzz/ are not sources).
fn built_after_sources(bin: &Path) -> bool {
    fn newest(dir: &Path, limit: std::time::SystemTime) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = e.file_type() else {
                return false;
            };
            if kind.is_dir() {
                // fuzz/ is a workspace of its own (its build rewrites fuzz/Cargo.lock).
                let skip = name.starts_with('.')
                    || matches!(&*name, "target" | "node_modules" | "fuzz");
                if !skip && !newest(&e.path(), limit) {
                    return false;
                }
            } else if name.ends_with(".rs")
                || name.ends_with(".proto")
                || name == "Cargo.toml"
                || name == "Cargo.lock"
            {
                match e.metadata().and_then(|m| m.modified()) {
                    Ok(t) if t < limit => {}
                    _ => return false,
                }
            }
        }
        true
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    newest(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), built)
}

/// Path of the repository's example templates.
pub fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates")
}

/// Starts standalone Nexus in-process on a free loopback port with a fresh data directory.
pub async fn start_standalone(data: &Path) -> Handle {
    start_standalone_with(data, |c| {
        c.scheduler.retry_base_delay = Duration::from_millis(20);
        c.scheduler.drain_grace = Duration::from_millis(200);
    })
    .await
}

/// As [`start_standalone`], with the demo templates and algorithms and the defaults otherwise;
/// `tune` changes the configuration first.
pub async fn start_standalone_with(
    data: &Path,
    tune: impl FnOnce(&mut StandaloneConfig),
) -> Handle {
    let mut c = StandaloneConfig {
        data_dir: data.to_path_buf(),
        templates_dir: templates(),
        ..StandaloneConfig::default()
    };
    c.executor.extra_path = vec![demo_dir()];
    // Algorithms start through `nexus sandbox-exec` as in production (Landlock where the kernel
    // has it); the test binary itself is not `nexus`.
    c.executor.launcher = Some(env!("CARGO_BIN_EXE_nexus").into());
    tune(&mut c);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start(c, l).await.expect("standalone starts")
}

/// Polls `GET results` until the run is terminal; panics after `limit`.
pub async fn wait_terminal(
    http: &reqwest::Client,
    base: &str,
    alg: &str,
    id: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let r: serde_json::Value = http
            .get(format!("{base}/algorithm/v1/results/{alg}/requests/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let st = r["status"].as_str().unwrap_or_default().to_owned();
        if [
            "COMPLETED",
            "FAILED",
            "SCHEDULING_FAILED",
            "DEADLINE_EXCEEDED",
            "CANCELLED",
        ]
        .contains(&st.as_str())
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} still {st} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `cond` holds; panics after `limit`.
pub async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut cond: F,
) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a run and returns its id.
pub async fn submit(
    http: &reqwest::Client,
    base: &str,
    alg: &str,
    params: serde_json::Value,
) -> String {
    let r = http
        .post(format!("{base}/algorithm/v1/run/{alg}"))
        .json(&serde_json::json!({ "algorithmParameters": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    v["requestId"].as_str().unwrap().to_owned()
}

/// GETs `url` and decodes the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A listener on a free loopback port.
pub async fn port0() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A file payload store signing with `key`, whose signed URLs are served by a small HTTP server
/// checking result uploads against `runs` (in production the distributed components share S3
/// instead).
pub async fn http_payloads(
    dir: &Path,
    key: &[u8],
    runs: std::sync::Arc<dyn nexus_store::RunStore>,
) -> std::sync::Arc<dyn nexus_payload::PayloadStore> {
    http_payloads_on(dir, key, runs, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// As [`http_payloads`], served on a free port of `ip` (the signed URLs name it): the node
/// address of a real cluster, so that pods reach it.
pub async fn http_payloads_on(
    dir: &Path,
    key: &[u8],
    runs: std::sync::Arc<dyn nexus_store::RunStore>,
    ip: std::net::IpAddr,
) -> std::sync::Arc<dyn nexus_payload::PayloadStore> {
    use nexus_embedded::{SqliteObjectStore, TieredPayloadStore};
    use nexus_payload::FsPayloadStore;
    let l = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
    let url = format!("http://{}", l.local_addr().unwrap());
    let fs = std::sync::Arc::new(
        FsPayloadStore::open(
            dir.join("objects"),
            url,
            nexus_model::sign::Signer::new(key),
        )
        .unwrap(),
    );
    let small = SqliteObjectStore::open(&dir.join("objects.db")).unwrap();
    let tiered = std::sync::Arc::new(TieredPayloadStore::new(small, fs));
    let app = nexus_cli::objects::router(
        tiered.clone(),
        runs,
        nexus_cli::config::DEFAULT_MAX_RESULT_BYTES,
    );
    let server = nexus_http::server::ServerConfig::default();
    tokio::spawn(nexus_http::server::serve(
        l,
        app,
        server,
        tokio_util::sync::CancellationToken::new(),
    ));
    tiered
}
