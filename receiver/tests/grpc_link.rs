//! Tier-1 tests of the gRPC link: a real receiver gRPC server on loopback port 0, reached through
//! [`GrpcShard`] (the scheduler's side) and the generated CompletionService client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_executor::{ExecutorEvent, RecordingExecutor};
use nexus_http::Readiness;
use nexus_link::grpc::{GrpcLinkConfig, GrpcShard, GrpcShardOptions, LinkAuth, LinkCredentials};
use nexus_link::shard::{Dispatch, Shard};
use nexus_model::error::ErrorKind;
use nexus_model::run::{Run, Stage};
use nexus_model::sign::Signer;
use nexus_model::spec::WorkgroupSpec;
use nexus_payload::InMemoryPayloadStore;
use nexus_proto::grpc::CompleteRequest;
use nexus_proto::grpc::completion_service_client::CompletionServiceClient;
use nexus_receiver::{Receiver, ReceiverConfig};
use nexus_store::{InMemoryRunStore, RunStore, test_suite::sample_run};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const SHARD: &str = "local";

struct Harness {
    url: String,
    store: Arc<InMemoryRunStore>,
    exec: Arc<RecordingExecutor>,
    readiness: Readiness,
    shutdown: CancellationToken,
    _events: UnboundedReceiver<ExecutorEvent>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(creds: LinkCredentials, config: ReceiverConfig, scheme: &str) -> Harness {
    let store = Arc::new(InMemoryRunStore::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = Arc::new(RecordingExecutor::new(tx));
    let receiver = Receiver::for_shard(
        config,
        SHARD,
        "receiver-1",
        store.clone(),
        Arc::new(InMemoryPayloadStore::default()),
        exec.clone(),
        Signer::random(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let readiness = Readiness::default();
    readiness.set(true);
    let shutdown = CancellationToken::new();
    tokio::spawn(nexus_receiver::grpc::serve(
        receiver,
        creds,
        listener,
        readiness.clone(),
        shutdown.clone(),
    ));
    Harness {
        url: format!("{scheme}://127.0.0.1:{port}"),
        store,
        exec,
        readiness,
        shutdown,
        _events: rx,
    }
}

fn secret() -> LinkCredentials {
    LinkCredentials::shared_secret(SECRET).unwrap()
}

fn client(endpoints: &[String], creds: &LinkCredentials) -> GrpcShard {
    GrpcShard::new(SHARD, endpoints, creds, GrpcShardOptions::default()).unwrap()
}

fn dispatch(run: &Run) -> Dispatch {
    Dispatch {
        run: run.clone(),
        workgroup: WorkgroupSpec {
            cluster: run.shard.clone(),
            ..Default::default()
        },
        payload_url: "http://127.0.0.1:1/p".into(),
        relaunch: false,
        scheduler_url: String::new(),
    }
}

async fn new_run(h: &Harness) -> Run {
    let run = sample_run("alg");
    h.store.insert(run.clone()).await.unwrap();
    run
}

/// A loopback address nobody listens on.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn grpc_shard_conforms_to_the_shard_contract() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let shard = client(std::slice::from_ref(&h.url), &secret());
    let run = new_run(&h).await;
    nexus_link::shard::test_suite::run_all(&shard, run.clone()).await;
    let launches = h.exec.launches();
    assert!(!launches.is_empty(), "the run was launched");
    let caps = shard.capacity().await;
    let cap = caps[0].1.as_ref().unwrap();
    assert_eq!(cap.shard, SHARD);
    assert_eq!(cap.receiver_id, "receiver-1");
    assert!(cap.ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_batched_and_all_launch() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let shard = client(std::slice::from_ref(&h.url), &secret());
    let mut runs = Vec::new();
    for _ in 0..200 {
        runs.push(new_run(&h).await);
    }
    let submits = runs.iter().map(|r| {
        let shard = shard.clone();
        let d = dispatch(r);
        tokio::spawn(async move { shard.submit(d).await })
    });
    for r in futures::future::join_all(submits).await {
        r.unwrap().unwrap();
    }
    assert_eq!(h.exec.launches().len(), 200);
    let calls = shard.submit_calls();
    eprintln!("200 concurrent submits in {calls} Submit calls");
    assert!(
        calls < 200,
        "200 concurrent submits took {calls} Submit calls"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_unauthorized() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let run = new_run(&h).await;
    let wrong = LinkCredentials::shared_secret("another-secret-of-enough-length").unwrap();
    for (creds, why) in [
        (wrong, "grpc secret refused"),
        (LinkCredentials::none(), "missing component credential"),
    ] {
        let shard = client(std::slice::from_ref(&h.url), &creds);
        let e = shard.submit(dispatch(&run)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
        assert!(e.message.contains(why), "{e}");
        let e = shard.cancel(run.id, Default::default()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
    }
    assert!(h.exec.launches().is_empty());
}

#[tokio::test]
async fn auth_none_on_both_sides_works() {
    let h = start(LinkCredentials::none(), ReceiverConfig::default(), "http").await;
    let shard = client(std::slice::from_ref(&h.url), &LinkCredentials::none());
    let run = new_run(&h).await;
    shard.submit(dispatch(&run)).await.unwrap();
    assert_eq!(h.exec.launches().len(), 1);
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, san) in [("server", "localhost"), ("client", "scheduler")] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![san.to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn config(&self, auth: LinkAuth, who: Option<&str>) -> GrpcLinkConfig {
        let p = |f: &str| Some(self.dir.path().join(f));
        GrpcLinkConfig {
            auth,
            secret_file: None,
            tls_ca: p("ca.pem"),
            tls_cert: who.and_then(|w| p(&format!("{w}.pem"))),
            tls_key: who.and_then(|w| p(&format!("{w}.key"))),
            tls_server_name: Some("localhost".into()),
        }
    }
}

#[tokio::test]
async fn mtls_admits_a_client_certificate_and_refuses_its_absence() {
    let pki = Pki::new();
    let server = pki
        .config(LinkAuth::Mtls, Some("server"))
        .load_with_env(None)
        .unwrap();
    let h = start(server, ReceiverConfig::default(), "https").await;
    let run = new_run(&h).await;

    let with_cert = pki
        .config(LinkAuth::Mtls, Some("client"))
        .load_with_env(None)
        .unwrap();
    let shard = client(std::slice::from_ref(&h.url), &with_cert);
    shard.submit(dispatch(&run)).await.unwrap();
    assert_eq!(h.exec.launches().len(), 1);

    // TLS with the right CA but no client certificate: the handshake succeeds (algorithms have
    // none), the ShardService refuses.
    let without_cert = pki
        .config(LinkAuth::None, None)
        .load_with_env(None)
        .unwrap();
    let shard = client(std::slice::from_ref(&h.url), &without_cert);
    let e = shard
        .submit(dispatch(&new_run(&h).await))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
    assert!(e.message.contains("client certificate required"), "{e}");
    assert_eq!(h.exec.launches().len(), 1);
}

#[tokio::test]
async fn over_the_launch_limit_is_resource_exhausted_with_a_retry_hint() {
    let mut config = ReceiverConfig::default();
    config.launch_limit.rate = 1.0;
    config.launch_limit.burst = 2;
    let h = start(secret(), config, "http").await;
    let shard = client(std::slice::from_ref(&h.url), &secret());
    shard.submit(dispatch(&new_run(&h).await)).await.unwrap();
    shard.submit(dispatch(&new_run(&h).await)).await.unwrap();
    let e = shard
        .submit(dispatch(&new_run(&h).await))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted, "{e}");
    let after = e.retry_after.expect("a retry hint");
    assert!(
        after > Duration::ZERO && after <= Duration::from_secs(1),
        "{after:?}"
    );
    assert_eq!(h.exec.launches().len(), 2);
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_all_dead_is_unavailable() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let dead = dead_endpoint().await;
    let shard = client(&[dead.clone(), h.url.clone()], &secret());
    for _ in 0..6 {
        shard.submit(dispatch(&new_run(&h).await)).await.unwrap();
    }
    assert_eq!(h.exec.launches().len(), 6);
    // A cancel reaches every live receiver and succeeds.
    shard
        .cancel(nexus_model::run::RunId::new(), Default::default())
        .await
        .unwrap();

    let other = dead_endpoint().await;
    let shard = client(&[dead, other], &secret());
    let e = shard
        .submit(dispatch(&new_run(&h).await))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("shard local"), "{e}");
}

#[tokio::test]
async fn a_receiver_that_is_not_ready_refuses_submissions() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    h.readiness.set(false);
    let shard = client(std::slice::from_ref(&h.url), &secret());
    let e = shard
        .submit(dispatch(&new_run(&h).await))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(h.exec.launches().is_empty());
}

#[tokio::test]
async fn health_follows_readiness() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let channel = tonic::transport::Endpoint::from_shared(h.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |s: i32| ServingStatus::try_from(s).unwrap();
    let check = HealthCheckRequest {
        service: "nexus.v1.ShardService".into(),
    };
    let r = health.check(check.clone()).await.unwrap().into_inner();
    assert_eq!(status(r.status), ServingStatus::Serving);
    h.readiness.set(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = health.check(check.clone()).await.unwrap().into_inner();
        if status(r.status) == ServingStatus::NotServing {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bearer(token: &str) -> tonic::metadata::AsciiMetadataValue {
    format!("Bearer {token}").parse().unwrap()
}

#[tokio::test]
async fn completion_service_completes_with_the_run_token_only_once() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let shard = client(std::slice::from_ref(&h.url), &secret());
    let run = new_run(&h).await;
    let other = new_run(&h).await;
    shard.submit(dispatch(&run)).await.unwrap();
    shard.submit(dispatch(&other)).await.unwrap();
    let tokens: HashMap<_, _> = h
        .exec
        .launches()
        .into_iter()
        .map(|l| {
            let env: HashMap<_, _> = l.env.into_iter().collect();
            (l.run_id, env[nexus_proto::v1::env::RUN_TOKEN].clone())
        })
        .collect();
    let mut c = CompletionServiceClient::connect(h.url.clone())
        .await
        .unwrap();
    let req = |token: Option<&str>| {
        let mut r = tonic::Request::new(CompleteRequest {
            algorithm: "alg".into(),
            run_id: run.id.to_string(),
            result_uri: "s3://bucket/result".into(),
            ..Default::default()
        });
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", bearer(t));
        }
        r
    };

    let e = c.complete(req(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("missing run token"), "{}", e.message());
    let e = c.complete(req(Some(&tokens[&other.id]))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());

    let ok = c
        .complete(req(Some(&tokens[&run.id])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.stage, "COMPLETED");
    let stored = h.store.get(run.id).await.unwrap().unwrap();
    assert_eq!(stored.stage, Stage::Completed);
    assert_eq!(stored.result_uri.as_deref(), Some("s3://bucket/result"));

    let e = c.complete(req(Some(&tokens[&run.id]))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
}

#[tokio::test]
async fn a_run_for_another_shard_is_invalid_input_naming_both() {
    let h = start(secret(), ReceiverConfig::default(), "http").await;
    let shard = client(std::slice::from_ref(&h.url), &secret());
    let mut run = sample_run("alg");
    run.shard = "elsewhere".into();
    h.store.insert(run.clone()).await.unwrap();
    let e = shard.submit(dispatch(&run)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(
        e.message.contains("'elsewhere'") && e.message.contains("'local'"),
        "{e}"
    );
    assert!(h.exec.launches().is_empty());
}
