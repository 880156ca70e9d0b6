use super::client::*;
use super::config::*;
use super::wire::*;
use crate::shard::Dispatch;
use nexus_model::error::ErrorKind;
use nexus_model::run::{CancellationPolicy, RunId};
use nexus_model::spec::WorkgroupSpec;

fn sample() -> Dispatch {
    let run = nexus_store::test_suite::sample_run("alg");
    Dispatch {
        workgroup: WorkgroupSpec {
            cluster: run.shard.clone(),
            description: "wg".into(),
            ..Default::default()
        },
        run,
        payload_url: "http://127.0.0.1:1/p".into(),
        relaunch: true,
        scheduler_url: "http://scheduler.example:8080".into(),
    }
}

#[test]
fn dispatch_round_trips_through_the_wire() {
    let d = sample();
    let w = dispatch_to_wire(&d);
    assert_eq!(w.run_id, d.run.id.to_string());
    assert_eq!(w.shard, "local");
    let back = dispatch_from_wire(w).unwrap();
    assert_eq!(back.run, d.run);
    assert_eq!(back.workgroup, d.workgroup);
    assert_eq!(back.payload_url, d.payload_url);
    assert_eq!(back.scheduler_url, d.scheduler_url);
    assert!(back.relaunch);
}

#[test]
fn dispatch_from_wire_names_bad_json_and_mismatched_ids() {
    let mut w = dispatch_to_wire(&sample());
    w.run_id = RunId::new().to_string();
    assert!(
        dispatch_from_wire(w)
            .unwrap_err()
            .contains("does not match")
    );
    let mut w = dispatch_to_wire(&sample());
    w.run_json = b"{".to_vec();
    assert!(dispatch_from_wire(w).unwrap_err().contains("run_json"));
    let mut w = dispatch_to_wire(&sample());
    w.workgroup_json = b"nope".to_vec();
    assert!(
        dispatch_from_wire(w)
            .unwrap_err()
            .contains("workgroup_json")
    );
}

#[test]
fn codes_and_kinds_map_both_ways() {
    for k in [
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::InvalidInput,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::ResourceExhausted,
        ErrorKind::Internal,
    ] {
        assert_eq!(kind_of(code_of(k)), k);
        assert_eq!(kind_of_status(k.grpc_code()), k);
    }
    assert_eq!(parse_policy("").unwrap(), CancellationPolicy::Background);
    assert_eq!(parse_policy("Orphan").unwrap(), CancellationPolicy::Orphan);
    assert!(parse_policy("Sideways").is_err());
}

#[test]
fn config_validation_names_the_key() {
    let c = GrpcLinkConfig {
        auth: LinkAuth::Mtls,
        tls_ca: Some("ca.pem".into()),
        ..Default::default()
    };
    assert!(c.validate().unwrap_err().contains("grpc.tls_cert"));
    let c = GrpcLinkConfig {
        tls_cert: Some("c.pem".into()),
        secret_file: Some("s".into()),
        ..Default::default()
    };
    assert!(c.validate().unwrap_err().contains("grpc.tls_key"));
    let c = GrpcLinkConfig {
        auth: LinkAuth::None,
        ..Default::default()
    };
    c.validate().unwrap();
    let parsed: GrpcLinkConfig = serde_yaml::from_str("auth: none\n").unwrap();
    assert_eq!(parsed.auth, LinkAuth::None);
    assert!(serde_yaml::from_str::<GrpcLinkConfig>("secret: x\n").is_err());
}

#[test]
fn load_reads_the_secret_env_first_and_checks_length_and_pem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "short\n").unwrap();
    let c = GrpcLinkConfig {
        secret_file: Some(f.clone()),
        ..Default::default()
    };
    assert!(c.load_with_env(None).unwrap_err().contains("at least 16"));
    let creds = c
        .load_with_env(Some("0123456789abcdef0123".into()))
        .unwrap();
    assert_eq!(creds.auth(), LinkAuth::SharedSecret);
    assert!(!format!("{creds:?}").contains("0123456789abcdef"));
    std::fs::write(&f, "0123456789abcdef-from-file\n").unwrap();
    c.load_with_env(None).unwrap();
    let missing = GrpcLinkConfig {
        secret_file: Some(dir.path().join("nope")),
        ..Default::default()
    };
    assert!(
        missing
            .load_with_env(None)
            .unwrap_err()
            .contains("cannot read")
    );
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not pem").unwrap();
    let c = GrpcLinkConfig {
        auth: LinkAuth::None,
        tls_ca: Some(bad),
        ..Default::default()
    };
    assert!(c.load_with_env(None).unwrap_err().contains("grpc.tls_ca"));
}

#[tokio::test]
async fn new_refuses_empty_or_bad_endpoints() {
    let creds = LinkCredentials::none();
    let o = GrpcShardOptions::default();
    assert!(
        GrpcShard::new("s", &[], &creds, o)
            .unwrap_err()
            .contains("no gRPC endpoints")
    );
    assert!(
        GrpcShard::new("s", &["tcp://x:1".into()], &creds, o)
            .unwrap_err()
            .contains("http://")
    );
    GrpcShard::new("s", &["http://127.0.0.1:1".into()], &creds, o).unwrap();
}

/// Receivers found through DNS: fake resolutions, real gRPC servers on loopback addresses
/// standing for pods (127.0.0.2, 127.0.0.3, … all answer on Linux).
mod dns {
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use nexus_proto::grpc::shard_service_server::{ShardService, ShardServiceServer};
    use nexus_proto::grpc::{
        CancelRequest, CancelResponse, CapacityRequest, CapacityResponse, Code, DescribeRequest,
        DescribeResponse, SubmitRequest, SubmitResponse, SubmitResult,
    };
    use tonic::{Request, Response, Status};

    use super::super::client::*;
    use super::super::config::*;
    use super::super::resolve::*;
    use super::sample;
    use crate::shard::Shard;
    use nexus_model::error::ErrorKind;

    /// A receiver that accepts every run and counts them.
    #[derive(Clone, Default)]
    struct Pod(Arc<AtomicUsize>);

    #[tonic::async_trait]
    impl ShardService for Pod {
        type LogsStream =
            futures::stream::BoxStream<'static, Result<nexus_proto::grpc::LogsChunk, Status>>;

        async fn logs(
            &self,
            _: Request<nexus_proto::grpc::LogsRequest>,
        ) -> Result<Response<Self::LogsStream>, Status> {
            Err(Status::unimplemented("submits only"))
        }
        async fn submit(
            &self,
            r: Request<SubmitRequest>,
        ) -> Result<Response<SubmitResponse>, Status> {
            let runs = r.into_inner().runs;
            self.0.fetch_add(runs.len(), Ordering::SeqCst);
            let results = runs
                .into_iter()
                .map(|w| SubmitResult {
                    run_id: w.run_id,
                    code: Code::Ok as i32,
                    message: String::new(),
                    retry_after_ms: 0,
                })
                .collect();
            Ok(Response::new(SubmitResponse { results }))
        }
        async fn cancel(
            &self,
            _: Request<CancelRequest>,
        ) -> Result<Response<CancelResponse>, Status> {
            Ok(Response::new(CancelResponse {}))
        }
        async fn capacity(
            &self,
            _: Request<CapacityRequest>,
        ) -> Result<Response<CapacityResponse>, Status> {
            Ok(Response::new(CapacityResponse::default()))
        }
        async fn describe(
            &self,
            r: Request<DescribeRequest>,
        ) -> Result<Response<DescribeResponse>, Status> {
            Ok(Response::new(DescribeResponse {
                receiver_id: "pod".into(),
                facts: vec![format!("knows {}", r.into_inner().run_id)],
            }))
        }
    }

    struct Pods {
        port: u16,
        counts: Vec<Arc<AtomicUsize>>,
        servers: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for Pods {
        fn drop(&mut self) {
            for s in &self.servers {
                s.abort();
            }
        }
    }

    /// Starts one receiver on each of `127.0.0.2..` on one common port (a Service's port).
    async fn pods(n: u8) -> Pods {
        'port: for _ in 0..50 {
            let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for k in 1..n {
                match tokio::net::TcpListener::bind((format!("127.0.0.{}", 2 + k), port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'port,
                }
            }
            let mut counts = Vec::new();
            let mut servers = Vec::new();
            for l in listeners {
                let pod = Pod::default();
                counts.push(pod.0.clone());
                servers.push(tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(ShardServiceServer::new(pod))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                        .await;
                }));
            }
            return Pods {
                port,
                counts,
                servers,
            };
        }
        panic!("no common free port on 127.0.0.2..");
    }

    /// What the fake DNS answers next, and how often it was asked.
    #[derive(Clone)]
    struct FakeDns {
        answer: Arc<Mutex<std::io::Result<Vec<IpAddr>>>>,
        asked: Arc<AtomicUsize>,
    }

    impl Default for FakeDns {
        fn default() -> Self {
            Self {
                answer: Arc::new(Mutex::new(Ok(Vec::new()))),
                asked: Arc::default(),
            }
        }
    }

    impl FakeDns {
        fn answer(&self, a: std::io::Result<&[&str]>) {
            *self.answer.lock().unwrap() =
                a.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect());
        }
        fn resolver(&self) -> Resolver {
            let me = self.clone();
            Resolver::from_fn(move |host| {
                assert_eq!(host, "receivers.test", "only the DNS name is resolved");
                me.asked.fetch_add(1, Ordering::SeqCst);
                let a = match &*me.answer.lock().unwrap() {
                    Ok(v) => Ok(v.clone()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                async move { a }
            })
        }
    }

    fn shard(dns: &FakeDns, endpoints: &[String]) -> GrpcShard {
        GrpcShard::with_resolver(
            "s",
            endpoints,
            &LinkCredentials::none(),
            GrpcShardOptions::default(),
            dns.resolver(),
        )
        .unwrap()
    }

    fn counts(p: &Pods) -> Vec<usize> {
        p.counts.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    }

    async fn submit(s: &GrpcShard, n: usize) {
        for _ in 0..n {
            s.submit(sample()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_new_address_gets_submits_and_a_removed_one_is_no_longer_picked() {
        let p = pods(3).await;
        let dns = FakeDns::default();
        dns.answer(Ok(&["127.0.0.2"]));
        let s = shard(&dns, &[format!("http://receivers.test:{}", p.port)]);
        // The first submit waits for the first resolution instead of failing.
        submit(&s, 4).await;
        assert_eq!(counts(&p), vec![4, 0, 0]);
        assert_eq!(s.endpoints(), vec![format!("http://127.0.0.2:{}", p.port)]);

        // Scaled up: the new pods receive work without a config change.
        dns.answer(Ok(&["127.0.0.4", "127.0.0.3", "127.0.0.2"]));
        s.resolve_now().await;
        submit(&s, 9).await;
        let c = counts(&p);
        assert!(c[1] >= 2 && c[2] >= 2, "every pod gets work: {c:?}");
        assert_eq!(c.iter().sum::<usize>(), 13);

        // Scaled down: the removed pod gets nothing more.
        dns.answer(Ok(&["127.0.0.3", "127.0.0.4"]));
        s.resolve_now().await;
        let before = counts(&p);
        submit(&s, 6).await;
        let after = counts(&p);
        assert_eq!(after[0], before[0], "removed address picked: {after:?}");
        assert_eq!(after[1] + after[2], before[1] + before[2] + 6);
        assert_eq!(s.endpoints().len(), 2);
    }

    #[tokio::test]
    async fn describe_asks_every_receiver_and_names_them() {
        let p = pods(2).await;
        let dns = FakeDns::default();
        dns.answer(Ok(&["127.0.0.2", "127.0.0.3"]));
        let s = shard(&dns, &[format!("http://receivers.test:{}", p.port)]);
        let id = nexus_model::run::RunId::new();
        let facts = s.describe(id).await;
        assert_eq!(facts, vec![format!("receiver pod: knows {id}"); 2]);
    }

    #[tokio::test]
    async fn failures_and_empty_answers_keep_the_last_set() {
        let p = pods(2).await;
        let dns = FakeDns::default();
        dns.answer(Ok(&["127.0.0.2", "127.0.0.3"]));
        let s = shard(&dns, &[format!("http://receivers.test:{}", p.port)]);
        s.resolve_now().await;
        let set = s.endpoints();
        assert_eq!(set.len(), 2);

        dns.answer(Err(std::io::Error::other("servfail")));
        s.resolve_now().await;
        assert_eq!(s.endpoints(), set);
        dns.answer(Ok(&[]));
        s.resolve_now().await;
        assert_eq!(s.endpoints(), set);
        submit(&s, 4).await;
        assert_eq!(counts(&p), vec![2, 2]);
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_makes_the_shard_unavailable_naming_it() {
        let dns = FakeDns::default();
        dns.answer(Ok(&[]));
        let s = shard(&dns, &["http://receivers.test:9091".into()]);
        let e = s.submit(sample()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("receivers.test"), "{}", e.message);
        dns.answer(Err(std::io::Error::other("nxdomain")));
        s.resolve_now().await;
        let e = s.submit(sample()).await.unwrap_err();
        assert!(
            e.message.contains("receivers.test (nxdomain)"),
            "{}",
            e.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_every_interval_and_ip_literals_never() {
        let dns = FakeDns::default();
        dns.answer(Ok(&["10.0.0.1"]));
        let ip_only = GrpcShard::with_resolver(
            "s",
            &["http://127.0.0.1:1".into(), "http://[::1]:1".into()],
            &LinkCredentials::none(),
            GrpcShardOptions::default(),
            dns.resolver(),
        )
        .unwrap();
        ip_only.resolve_now().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(dns.asked.load(Ordering::SeqCst), 0);
        assert_eq!(
            ip_only.endpoints(),
            vec!["http://127.0.0.1:1", "http://[::1]:1"]
        );

        let mixed = shard(
            &dns,
            &[
                "http://127.0.0.1:1".into(),
                "http://receivers.test:1".into(),
            ],
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(dns.asked.load(Ordering::SeqCst), 1);
        dns.answer(Ok(&["10.0.0.2", "10.0.0.1"]));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(dns.asked.load(Ordering::SeqCst), 2);
        assert_eq!(
            mixed.endpoints(),
            vec![
                "http://127.0.0.1:1",
                "http://10.0.0.1:1",
                "http://10.0.0.2:1"
            ]
        );
        // The resolving task ends with the shard.
        drop(mixed);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(dns.asked.load(Ordering::SeqCst) <= 3);
    }
}

/// `Logs` across the link: receivers that do not know the run or the call are passed over, the
/// one that has the output streams it as it comes.
mod logs {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt as _;
    use nexus_proto::grpc::shard_service_server::{ShardService, ShardServiceServer};
    use nexus_proto::grpc::{
        CancelRequest, CancelResponse, CapacityRequest, CapacityResponse, DescribeRequest,
        DescribeResponse, LogsChunk, LogsRequest, SubmitRequest, SubmitResponse,
    };
    use tokio::sync::Notify;
    use tonic::{Request, Response, Status};

    use super::super::client::*;
    use super::super::config::*;
    use crate::shard::Shard;
    use nexus_model::error::ErrorKind;
    use nexus_model::run::RunId;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// An older receiver: no `Logs` call.
        Old,
        /// A receiver whose executor has no output of the run.
        Unknowing,
        /// The one with the output: a first line, then (following) a second once released.
        Knowing,
        /// Sends a line, then fails.
        Breaking,
        /// Over its limit of log streams.
        Busy,
    }

    #[derive(Clone)]
    struct Receiver {
        kind: Kind,
        release: Arc<Notify>,
    }

    type Chunks = futures::stream::BoxStream<'static, Result<LogsChunk, Status>>;

    fn chunk(s: &'static str) -> Result<LogsChunk, Status> {
        Ok(LogsChunk {
            data: bytes::Bytes::from_static(s.as_bytes()),
        })
    }

    #[tonic::async_trait]
    impl ShardService for Receiver {
        type LogsStream = Chunks;

        async fn logs(&self, r: Request<LogsRequest>) -> Result<Response<Chunks>, Status> {
            let follow = r.into_inner().follow;
            let release = self.release.clone();
            match self.kind {
                Kind::Old => Err(Status::unimplemented("no Logs here")),
                Kind::Unknowing => Err(Status::not_found("no output of that run here")),
                Kind::Busy => Err(Status::resource_exhausted("64 log streams already")),
                Kind::Breaking => Ok(Response::new(
                    futures::stream::iter([chunk("one\n"), Err(Status::internal("pod gone"))])
                        .boxed(),
                )),
                Kind::Knowing => {
                    let first = futures::stream::iter([chunk("line 1\n")]);
                    if !follow {
                        return Ok(Response::new(first.boxed()));
                    }
                    let later = futures::stream::once(async move {
                        release.notified().await;
                        chunk("line 2\n")
                    });
                    Ok(Response::new(first.chain(later).boxed()))
                }
            }
        }
        async fn submit(
            &self,
            _: Request<SubmitRequest>,
        ) -> Result<Response<SubmitResponse>, Status> {
            Err(Status::unimplemented("logs only"))
        }
        async fn cancel(
            &self,
            _: Request<CancelRequest>,
        ) -> Result<Response<CancelResponse>, Status> {
            Ok(Response::new(CancelResponse {}))
        }
        async fn capacity(
            &self,
            _: Request<CapacityRequest>,
        ) -> Result<Response<CapacityResponse>, Status> {
            Ok(Response::new(CapacityResponse::default()))
        }
        async fn describe(
            &self,
            _: Request<DescribeRequest>,
        ) -> Result<Response<DescribeResponse>, Status> {
            Ok(Response::new(DescribeResponse::default()))
        }
    }

    /// One receiver of each kind given, on loopback; the shard over them, in that order.
    async fn shard(
        kinds: &[Kind],
        release: &Arc<Notify>,
    ) -> (GrpcShard, Vec<tokio::task::JoinHandle<()>>) {
        let mut urls = Vec::new();
        let mut servers = Vec::new();
        for &kind in kinds {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", l.local_addr().unwrap()));
            let svc = Receiver {
                kind,
                release: release.clone(),
            };
            servers.push(tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(ShardServiceServer::new(svc))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                    .await;
            }));
        }
        let s = GrpcShard::new(
            "s",
            &urls,
            &LinkCredentials::none(),
            GrpcShardOptions::default(),
        )
        .unwrap();
        (s, servers)
    }

    async fn next_text(s: &mut crate::shard::LogStream) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("a chunk or the end within 10 s")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn the_receiver_with_the_output_streams_it_live_past_old_and_unknowing_ones() {
        let release = Arc::new(Notify::new());
        let (s, _servers) = shard(&[Kind::Old, Kind::Unknowing, Kind::Knowing], &release).await;
        let mut stream = s.logs(RunId::new(), true).await.unwrap().expect("a stream");
        // The first line arrives while the run still runs (the second is not released yet).
        assert_eq!(next_text(&mut stream).await.as_deref(), Some("line 1\n"));
        release.notify_one();
        assert_eq!(next_text(&mut stream).await.as_deref(), Some("line 2\n"));
        assert_eq!(
            next_text(&mut stream).await,
            None,
            "ends when the receiver's stream ends"
        );

        // Without follow: what there is now, then the end.
        let mut stream = s
            .logs(RunId::new(), false)
            .await
            .unwrap()
            .expect("a stream");
        assert_eq!(next_text(&mut stream).await.as_deref(), Some("line 1\n"));
        assert_eq!(next_text(&mut stream).await, None);
    }

    #[tokio::test]
    async fn no_receiver_with_output_is_none_and_a_refusal_is_an_error() {
        let release = Arc::new(Notify::new());
        let (s, _servers) = shard(&[Kind::Old, Kind::Unknowing], &release).await;
        assert!(s.logs(RunId::new(), true).await.unwrap().is_none());

        let (s, _servers) = shard(&[Kind::Busy, Kind::Unknowing], &release).await;
        let e = s.logs(RunId::new(), true).await.err().expect("an error");
        assert_eq!(e.kind, ErrorKind::ResourceExhausted);
        assert!(e.message.contains("64 log streams"), "{}", e.message);
        // A busy receiver is passed over when another has the output.
        let (s, _servers) = shard(&[Kind::Busy, Kind::Knowing], &release).await;
        let mut stream = s
            .logs(RunId::new(), false)
            .await
            .unwrap()
            .expect("a stream");
        assert_eq!(next_text(&mut stream).await.as_deref(), Some("line 1\n"));
    }

    #[tokio::test]
    async fn a_stream_that_breaks_ends_with_a_line_saying_so() {
        let release = Arc::new(Notify::new());
        let (s, _servers) = shard(&[Kind::Breaking], &release).await;
        let mut stream = s.logs(RunId::new(), true).await.unwrap().expect("a stream");
        assert_eq!(next_text(&mut stream).await.as_deref(), Some("one\n"));
        let note = next_text(&mut stream).await.expect("a note");
        assert!(note.contains("broke: pod gone"), "{note}");
        assert_eq!(next_text(&mut stream).await, None);
    }
}
