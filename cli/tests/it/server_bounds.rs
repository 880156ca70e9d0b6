//! Result uploads against a standalone (issue #16): a result is written only while its run is
//! RUNNING and never changes once the run finished; uploads are bounded by `max_result_bytes`
//! (declared or counted while streaming); objects are served with their length; and the
//! bounded server keeps serving probes under a flood of idle connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{eventually, get_json, submit, templates};
use nexus_cli::config::StandaloneConfig;
use nexus_cli::standalone::start_with_executor;
use nexus_executor::{Executor, RecordingExecutor};

/// Starts a standalone whose executor runs nothing (runs stay RUNNING once launched); returns
/// it with the executor.
async fn standalone(
    data: &std::path::Path,
    tune: impl FnOnce(&mut StandaloneConfig),
) -> (nexus_cli::standalone::Handle, Arc<RecordingExecutor>) {
    let mut c = StandaloneConfig {
        data_dir: data.to_path_buf(),
        templates_dir: templates(),
        ..StandaloneConfig::default()
    };
    tune(&mut c);
    let slot: Arc<Mutex<Option<Arc<RecordingExecutor>>>> = Arc::default();
    let s2 = slot.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = start_with_executor(c, l, move |events, _| {
        let e = Arc::new(RecordingExecutor::new(events));
        *s2.lock().unwrap() = Some(e.clone());
        e as Arc<dyn Executor>
    })
    .await
    .expect("standalone starts");
    let exec = slot.lock().unwrap().clone().expect("executor built");
    (h, exec)
}

/// The value of `name` in the launch environment of run `id`.
fn launch_env(exec: &RecordingExecutor, id: &str, name: &str) -> Option<String> {
    exec.launches()
        .iter()
        .find(|l| l.run_id.to_string() == id)
        .and_then(|l| {
            l.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
}

/// Submits a knapsack run and waits until it is RUNNING; returns (id, result upload URL).
async fn running_run(
    http: &reqwest::Client,
    base: &str,
    exec: &RecordingExecutor,
) -> (String, String) {
    let id = submit(http, base, "knapsack", serde_json::json!({})).await;
    eventually(Duration::from_secs(20), "the run is launched", || async {
        launch_env(exec, &id, "NEXUS__RESULT_UPLOAD_URL").is_some()
    })
    .await;
    // Standalone records RUNNING when the process has started.
    assert!(exec.start(id.parse().unwrap()));
    let status_url = format!("{base}/algorithm/v1/results/knapsack/requests/{id}");
    eventually(Duration::from_secs(20), "the run is RUNNING", || async {
        get_json(http, &status_url).await["status"] == "RUNNING"
    })
    .await;
    let url = launch_env(exec, &id, "NEXUS__RESULT_UPLOAD_URL").expect("a result upload URL");
    (id, url)
}

async fn complete(http: &reqwest::Client, exec: &RecordingExecutor, id: &str) {
    let token = launch_env(exec, id, "NEXUS__RUN_TOKEN").expect("a run token");
    let receiver = launch_env(exec, id, "NEXUS__RECEIVER_URL").expect("a receiver URL");
    let r = http
        .post(format!(
            "{receiver}/algorithm/v1/complete/knapsack/requests/{id}"
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({ "resultUri": "" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A body of `first`, then (once `go` is notified) `second`: an upload still in flight.
fn gated_body(first: Vec<u8>, second: Vec<u8>, go: Arc<tokio::sync::Notify>) -> reqwest::Body {
    let s = futures::stream::unfold(0u8, move |step| {
        let (first, second, go) = (first.clone(), second.clone(), go.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    go.notified().await;
                    Some((Ok(second), 2))
                }
                _ => None,
            }
        }
    });
    reqwest::Body::wrap_stream(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_written_once_while_running_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (h, exec) = standalone(dir.path(), |c| c.max_result_bytes = 1024 * 1024).await;
    let base = h.url.clone();
    let http = reqwest::Client::new();
    let (id, put) = running_run(&http, &base, &exec).await;

    // Uploads while RUNNING; a retry replaces the first attempt. Big enough for a file.
    let first = vec![1u8; 600 * 1024];
    let r = http.put(&put).body(first).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let result = vec![2u8; 700 * 1024];
    let r = http.put(&put).body(result.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Over max_result_bytes: declared, or counted in a chunked body. Nothing is stored.
    let r = http
        .put(&put)
        .body(vec![3u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("max_result_bytes"));
    let chunks =
        futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![4u8; 256 * 1024])));
    let r = http
        .put(&put)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        // The server may answer before the client finished sending (then the send fails).
        assert_eq!(r.status(), 413);
    }

    // An upload in flight when the run completes is refused at its end, and changes nothing.
    let go = Arc::new(tokio::sync::Notify::new());
    let late = tokio::spawn({
        let (http, put, go) = (http.clone(), put.clone(), go.clone());
        async move {
            http.put(&put)
                .body(gated_body(vec![5u8; 300 * 1024], vec![5u8; 300 * 1024], go))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    complete(&http, &exec, &id).await;
    go.notify_one();
    let r = late.await.unwrap();
    assert_eq!(r.status(), 409);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("COMPLETED") && text.contains("RUNNING"),
        "{text}"
    );

    // After completion: 409 at once, and the stored result is the last one uploaded while
    // RUNNING, served with its length.
    let r = http.put(&put).body(vec![6u8; 10]).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let status = get_json(
        &http,
        &format!("{base}/algorithm/v1/results/knapsack/requests/{id}"),
    )
    .await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let got = http
        .get(status["resultUri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.content_length(), Some(result.len() as u64));
    assert!(got.bytes().await.unwrap() == result, "the result changed");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_under_a_flood_of_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _exec) = standalone(dir.path(), |c| {
        c.server.max_connections = 50;
        c.server.idle_timeout = Duration::from_millis(500);
        c.server.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
    }
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/health/readyz", h.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every idle connection is closed, by the limit or by the timeouts.
    for s in &mut idle {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the server closes idle connections")
            .unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got data");
    }
    h.stop().await;
}
