//! Tier-1 tests of the S3 store against the in-process server of [`super::test_server`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::test_server::TestServer;
use super::*;
use crate::test_suite::{self, PlainHttp};

const BUCKET: &str = "nexus-test";
const MIB: usize = 1024 * 1024;

/// A plain reqwest client: no credentials, no retries.
struct Plain(reqwest::Client);

#[async_trait]
impl PlainHttp for Plain {
    async fn get(&self, url: &str) -> (u16, Bytes) {
        let resp = self.0.get(url).send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("GET body"))
    }

    async fn put(&self, url: &str, body: Bytes) -> u16 {
        let resp = self.0.put(url).body(body).send().await.expect("PUT");
        resp.status().as_u16()
    }
}

fn config(url: &str) -> S3Config {
    S3Config::from_url_with_env(url, |_| None).expect("test URL")
}

/// A store on `server`'s `bucket` (not created).
async fn store(server: &TestServer, bucket: &str, extra: &str) -> S3PayloadStore {
    S3PayloadStore::open(&config(&server.url(bucket, extra)))
        .await
        .expect("open")
}

/// A store on a fresh server's bucket, created.
async fn ready(extra: &str) -> (TestServer, S3PayloadStore) {
    let server = TestServer::start().await;
    let s = store(&server, BUCKET, extra).await;
    s.create_bucket().await.expect("create bucket");
    s.create_bucket().await.expect("create bucket again");
    (server, s)
}

fn data(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Waits until `cond` holds, for at most 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn object_keys_spread_over_256_hashed_prefixes() {
    let key = "payloads/knapsack/01890a5d-ac96-774b-bcce-b302099a8057";
    assert_eq!(object_key("nexus", key), format!("nexus/4a/{key}"));
    assert_eq!(object_key("a/b", "results/a/1"), "a/b/24/results/a/1");
    assert_eq!(object_key("", "x"), "2d/x");
    // Time-ordered ids of one algorithm still land evenly on every prefix.
    let mut counts = [0u32; 256];
    for _ in 0..25_600 {
        let k = crate::Keys::payload("knapsack", &uuid::Uuid::now_v7().to_string());
        let o = object_key("", &k);
        counts[usize::from_str_radix(&o[..2], 16).unwrap()] += 1;
    }
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(*min >= 50 && *max <= 170, "uneven spread: {min}..{max}");
}

#[test]
fn error_kinds() {
    let service = |status, code| kind_of(Failure::Service { status, code });
    for (status, code, kind) in [
        (404, Some("NoSuchKey"), ErrorKind::NotFound),
        (404, Some("NoSuchBucket"), ErrorKind::Unavailable),
        (404, None, ErrorKind::Unavailable),
        (301, Some("PermanentRedirect"), ErrorKind::Unavailable),
        (
            400,
            Some("AuthorizationHeaderMalformed"),
            ErrorKind::Unavailable,
        ),
        (403, Some("AccessDenied"), ErrorKind::Forbidden),
        (403, Some("InvalidAccessKeyId"), ErrorKind::Unauthorized),
        (403, Some("SignatureDoesNotMatch"), ErrorKind::Unauthorized),
        (403, Some("NotSignedUp"), ErrorKind::Unauthorized),
        (400, Some("ExpiredToken"), ErrorKind::Unauthorized),
        (403, Some("RequestTimeTooSkewed"), ErrorKind::Forbidden),
        (503, Some("SlowDown"), ErrorKind::ResourceExhausted),
        (400, Some("Throttling"), ErrorKind::ResourceExhausted),
        (429, None, ErrorKind::ResourceExhausted),
        (503, Some("ServiceUnavailable"), ErrorKind::Unavailable),
        (503, None, ErrorKind::Unavailable),
        (500, Some("InternalError"), ErrorKind::Unavailable),
        (400, Some("RequestTimeout"), ErrorKind::Timeout),
        (400, Some("KeyTooLongError"), ErrorKind::InvalidInput),
        (400, Some("InvalidArgument"), ErrorKind::InvalidInput),
        (412, Some("PreconditionFailed"), ErrorKind::Conflict),
        (400, Some("MalformedXML"), ErrorKind::Internal),
    ] {
        assert_eq!(service(status, code), kind, "{status} {code:?}");
    }
    assert_eq!(kind_of(Failure::Timeout), ErrorKind::Timeout);
    assert_eq!(kind_of(Failure::NoCredentials), ErrorKind::Unauthorized);
    assert_eq!(kind_of(Failure::Dispatch), ErrorKind::Unavailable);
    assert_eq!(kind_of(Failure::Body), ErrorKind::Unavailable);
    assert_eq!(
        kind_of(Failure::BadResponse { status: 502 }),
        ErrorKind::Unavailable
    );
    assert_eq!(
        kind_of(Failure::BadResponse { status: 200 }),
        ErrorKind::Internal
    );
    assert_eq!(kind_of(Failure::Construction), ErrorKind::Internal);
}

#[test]
fn url_validity_is_clamped_to_s3s_range() {
    assert_eq!(
        url_validity(Duration::from_secs(3600)),
        Duration::from_secs(3600)
    );
    assert_eq!(url_validity(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        url_validity(Duration::from_millis(1500)),
        Duration::from_secs(2)
    );
    assert_eq!(url_validity(MAX_URL_VALIDITY), MAX_URL_VALIDITY);
    assert_eq!(
        url_validity(Duration::from_secs(30 * 24 * 3600)),
        MAX_URL_VALIDITY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let (_server, s) = ready("").await;
    test_suite::run_all(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_work_with_a_plain_client_and_refuse_tampering() {
    let (_server, s) = ready("").await;
    test_suite::signed_urls_over_http(&s, &Plain(reqwest::Client::new())).await;
    let url = s
        .signed_get_url("results/a/1", Duration::from_secs(30 * 24 * 3600))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Expires=604800"), "not clamped: {url}");
    assert!(url.contains("/nexus-test/nexus/24/results/a/1?"), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_land_under_their_hashed_prefix() {
    let (server, s) = ready("").await;
    s.put("results/a/1", Bytes::from_static(b"r"))
        .await
        .unwrap();
    assert!(server.has_object(BUCKET, "nexus/24/results/a/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_objects_go_as_multipart_uploads() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = &server.faults;
    let big = data(12 * MIB + 7);
    s.put("results/a/big", big.clone()).await.unwrap();
    assert_eq!(f.parts.load(Ordering::SeqCst), 3, "5 + 5 + 2 MiB");
    assert_eq!(f.completes.load(Ordering::SeqCst), 1);
    assert_eq!(f.puts.load(Ordering::SeqCst), 0);
    let got = s.get("results/a/big").await.unwrap().unwrap();
    assert!(got == big, "multipart object differs");
    // At the threshold: one PutObject.
    s.put("results/a/at", data(5 * MIB + 1)).await.unwrap();
    assert_eq!(f.puts.load(Ordering::SeqCst), 1);
    assert_eq!(f.parts.load(Ordering::SeqCst), 3);
    // Overwriting a multipart object with a small one.
    s.put("results/a/big", Bytes::from_static(b"small"))
        .await
        .unwrap();
    assert_eq!(
        s.get("results/a/big").await.unwrap(),
        Some(Bytes::from_static(b"small"))
    );
}

/// A `put_reader` body over `data` that counts the bytes it has handed out.
struct Counted {
    data: Bytes,
    read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counted {
    fn new(data: Bytes) -> (Box<Self>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let read = std::sync::Arc::default();
        let body = Box::new(Self {
            data,
            read: std::sync::Arc::clone(&read),
        });
        (body, read)
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let at = self.read.load(Ordering::SeqCst);
        // Network-sized reads.
        let n = buf.remaining().min(self.data.len() - at).min(64 * 1024);
        buf.put_slice(&self.data[at..at + n]);
        self.read.fetch_add(n, Ordering::SeqCst);
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_reader_streams_big_objects_as_multipart_uploads() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = &server.faults;
    let big = data(12 * MIB + 7);
    let (body, read) = Counted::new(big.clone());
    s.put_reader("results/a/big", body, big.len() as u64)
        .await
        .unwrap();
    assert_eq!(f.parts.load(Ordering::SeqCst), 3, "5 + 5 + 2 MiB");
    assert_eq!(f.completes.load(Ordering::SeqCst), 1);
    assert_eq!(f.puts.load(Ordering::SeqCst), 0);
    assert_eq!(read.load(Ordering::SeqCst), big.len(), "read to its end");
    let got = s.get("results/a/big").await.unwrap().unwrap();
    assert!(got == big, "multipart object differs");
    // At the threshold: one PutObject.
    let at = data(5 * MIB + 1);
    s.put_reader(
        "results/a/at",
        test_suite::reader(&at, 65_536),
        at.len() as u64,
    )
    .await
    .unwrap();
    assert_eq!(f.puts.load(Ordering::SeqCst), 1);
    assert_eq!(f.parts.load(Ordering::SeqCst), 3);
    assert!(s.get("results/a/at").await.unwrap().unwrap() == at);
}

/// The memory bound: while part 1 hangs, the body is read no further than the parts in flight
/// (`PART_CONCURRENCY` × `part_size`), although the object is much bigger; cancelled, the
/// upload is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_reader_reads_no_further_than_the_parts_in_flight() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = std::sync::Arc::clone(&server.faults);
    f.stall_part.store(1, Ordering::SeqCst);
    let parts = PART_CONCURRENCY as u32;
    let big = data((PART_CONCURRENCY + 3) * 5 * MIB);
    let (body, read) = Counted::new(big.clone());
    let task = {
        let s = s.clone();
        tokio::spawn(async move { s.put_reader("results/a/big", body, big.len() as u64).await })
    };
    eventually("part 1 stalls and the others in flight arrive", || {
        f.stalled.load(Ordering::SeqCst) == 1 && f.parts.load(Ordering::SeqCst) == parts
    })
    .await;
    // Time to read further, were it allowed to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read.load(Ordering::SeqCst),
        PART_CONCURRENCY * 5 * MIB,
        "the body was read ahead of the parts in flight"
    );
    assert_eq!(f.parts.load(Ordering::SeqCst), parts);
    task.abort();
    eventually("the upload is aborted", || {
        f.aborts.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(f.completes.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_reader_of_the_wrong_length_aborts_the_multipart_upload() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = &server.faults;
    s.put("results/a/big", Bytes::from_static(b"before"))
        .await
        .unwrap();
    let body = data(12 * MIB);
    for (aborts, announced) in [(1, 12 * MIB + 1), (2, 12 * MIB - 1)] {
        let err = s
            .put_reader(
                "results/a/big",
                test_suite::reader(&body, 65_536),
                announced as u64,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
        assert!(err.message.contains("announced"), "{err}");
        assert_eq!(f.aborts.load(Ordering::SeqCst), aborts, "{announced}");
        assert_eq!(f.completes.load(Ordering::SeqCst), 0, "{announced}");
    }
    assert_eq!(
        s.get("results/a/big").await.unwrap(),
        Some(Bytes::from_static(b"before"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_aborts_the_upload() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = &server.faults;
    f.fail_part.store(2, Ordering::SeqCst);
    let err = s.put("results/a/big", data(12 * MIB)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
    assert!(
        err.message.contains("upload part of 'results/a/big'"),
        "{err}"
    );
    assert_eq!(f.aborts.load(Ordering::SeqCst), 1);
    assert_eq!(f.completes.load(Ordering::SeqCst), 0);
    assert_eq!(s.get("results/a/big").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_multipart_put_is_aborted() {
    let (server, s) = ready("&multipart_threshold=5242881&part_size=5MiB").await;
    let f = std::sync::Arc::clone(&server.faults);
    f.stall_part.store(2, Ordering::SeqCst);
    let task = {
        let s = s.clone();
        tokio::spawn(async move { s.put("results/a/big", data(12 * MIB)).await })
    };
    eventually("the stalled part arrives", || {
        f.stalled.load(Ordering::SeqCst) == 1
    })
    .await;
    task.abort();
    eventually("the upload is aborted", || {
        f.aborts.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(f.completes.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff_then_reported() {
    let (server, s) = ready("&max_attempts=3").await;
    let f = &server.faults;
    f.slow_down.store(2, Ordering::SeqCst);
    s.put("results/a/1", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(f.slow_downs_sent.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.get("results/a/1").await.unwrap(),
        Some(Bytes::from_static(b"x"))
    );

    f.slow_down.store(100, Ordering::SeqCst);
    let err = s.get("results/a/1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ResourceExhausted, "{err}");
    assert!(err.message.contains("throttling"), "{err}");
    assert_eq!(
        f.slow_downs_sent.load(Ordering::SeqCst),
        2 + 3,
        "3 attempts"
    );
    f.slow_down.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_not_missing() {
    let (server, good) = ready("").await;
    good.put("results/a/1", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut c = config(&server.url(BUCKET, ""));
    c.secret_key = Some(nexus_model::secret::Secret::new(
        "not-the-secret".to_owned(),
    ));
    let bad_secret = S3PayloadStore::open(&c).await.unwrap();
    c.access_key = Some("NOT-A-KEY".to_owned());
    let bad_key = S3PayloadStore::open(&c).await.unwrap();
    for s in [&bad_secret, &bad_key] {
        let err = s.get("results/a/1").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
        assert!(
            err.message.contains("refused the credentials")
                && err.message.contains("bucket 'nexus-test'"),
            "{err}"
        );
        assert!(
            !err.message.contains("not-the-secret"),
            "secret leaked: {err}"
        );
        let err = s
            .put("results/a/1", Bytes::from_static(b"y"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::Unauthorized | ErrorKind::Forbidden),
            "{err}"
        );
        assert!(s.delete("results/a/1").await.is_err());
    }
    assert_eq!(
        bad_secret
            .put("results/a/1", Bytes::from_static(b"y"))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Unauthorized,
        "SignatureDoesNotMatch"
    );
    // Nothing was overwritten or deleted.
    assert_eq!(
        good.get("results/a/1").await.unwrap(),
        Some(Bytes::from_static(b"x"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_an_error_that_names_it() {
    let server = TestServer::start().await;
    let s = store(&server, "no-such-bucket", "").await;
    let err = s.get("results/a/1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains("bucket 'no-such-bucket' does not exist"),
        "{err}"
    );
    let err = s
        .put("results/a/1", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("'no-such-bucket'"), "{err}");
    assert_eq!(
        s.delete("results/a/1").await.unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_unavailable() {
    // A port nothing listens on: bind, note, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = config(&format!(
        "s3://{BUCKET}?endpoint=http://127.0.0.1:{port}&access_key=a&secret_key=b\
         &retry_backoff=10ms"
    ));
    let s = S3PayloadStore::open(&c).await.unwrap();
    let err = s.get("results/a/1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message.contains("cannot reach http://127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let c = config(&format!(
        "s3://{BUCKET}?endpoint=http://{addr}&access_key=a&secret_key=b&timeout=300ms\
         &max_attempts=2&retry_backoff=10ms"
    ));
    let s = S3PayloadStore::open(&c).await.unwrap();
    let started = Instant::now();
    let err = s.get("results/a/1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    hold.abort();
}

#[tokio::test]
async fn invalid_keys_are_refused_before_any_request() {
    let server = TestServer::start().await;
    let s = store(&server, BUCKET, "").await;
    for key in ["", "../x", "/abs", "a//b", "a b", "a/"] {
        let inv =
            |r: Result<(), PayloadError>| matches!(r, Err(e) if e.kind == ErrorKind::InvalidInput);
        assert!(inv(s.put(key, Bytes::new()).await), "{key:?}");
        let body = test_suite::reader(&Bytes::from_static(b"x"), 1);
        assert!(inv(s.put_reader(key, body, 1).await), "{key:?}");
        assert!(inv(s.get(key).await.map(|_| ())), "{key:?}");
        assert!(inv(s.delete(key).await), "{key:?}");
        assert!(
            inv(s
                .signed_put_url(key, Duration::from_secs(1))
                .await
                .map(|_| ())),
            "{key:?}"
        );
    }
    assert_eq!(server.faults.puts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn open_refuses_an_invalid_config() {
    let mut c = S3Config::new("nexus-test");
    c.part_size = 1;
    let err = S3PayloadStore::open(&c).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message.contains("part_size"), "{err}");
}

/// Set in the child process of [`web_identity_credentials_from_the_default_chain`]: the URL of
/// the store to open without static keys.
const WEB_IDENTITY_CHILD: &str = "NEXUS_S3_TEST_WEB_IDENTITY_URL";

/// A fake STS answering `AssumeRoleWithWebIdentity` with the test server's keys, for the JWT
/// in `token` only; returns its endpoint and the number of calls that carried the token.
async fn fake_sts(token: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = std::sync::Arc::clone(&calls);
    let app = axum::Router::new().fallback(move |body: String| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            if !(body.contains("Action=AssumeRoleWithWebIdentity")
                && body.contains(&format!("WebIdentityToken={token}"))
                && body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fnexus"))
            {
                return (axum::http::StatusCode::FORBIDDEN, format!("unexpected: {body}"));
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let xml = format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                 <AssumeRoleWithWebIdentityResult><Credentials>\
                 <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
                 <SessionToken>session-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
                 </Credentials><AssumedRoleUser>\
                 <Arn>arn:aws:sts::123456789012:assumed-role/nexus/test</Arn>\
                 <AssumedRoleId>AROAEXAMPLE:test</AssumedRoleId></AssumedRoleUser>\
                 </AssumeRoleWithWebIdentityResult>\
                 <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>\
                 </AssumeRoleWithWebIdentityResponse>",
                super::test_server::ACCESS_KEY,
                super::test_server::SECRET_KEY,
            );
            (axum::http::StatusCode::OK, xml)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, calls)
}

/// Without static keys the AWS default chain is used, web identity included (EKS IRSA): a
/// child process (the environment is per process) with only `AWS_WEB_IDENTITY_TOKEN_FILE` and
/// `AWS_ROLE_ARN` gets credentials from STS and uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_from_the_default_chain() {
    if let Ok(url) = std::env::var(WEB_IDENTITY_CHILD) {
        let s = S3PayloadStore::open(&config(&url)).await.expect("open");
        s.put("results/a/wi", Bytes::from_static(b"irsa"))
            .await
            .expect("put with web identity credentials");
        assert_eq!(
            s.get("results/a/wi").await.expect("get"),
            Some(Bytes::from_static(b"irsa"))
        );
        return;
    }
    let (server, _) = ready("").await;
    const TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJuZXh1cyJ9.";
    let (sts, calls) = fake_sts(TOKEN).await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let url = format!(
        "s3://{BUCKET}/nexus?endpoint={}&retry_backoff=10ms",
        server.endpoint
    );
    // A clean environment: no AWS keys, profiles or instance metadata to fall back on.
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "s3::tests::web_identity_credentials_from_the_default_chain",
            "--test-threads=1",
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/nexus")
        .env("AWS_ROLE_SESSION_NAME", "nexus-test")
        .env("AWS_ENDPOINT_URL_STS", &sts)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(WEB_IDENTITY_CHILD, &url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran no test: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(calls.load(Ordering::SeqCst) >= 1, "STS was not asked");
    assert_eq!(
        server.faults.puts.load(Ordering::SeqCst),
        1,
        "the child's put"
    );
}

#[test]
fn retention_rounds_up_to_whole_days() {
    use std::time::Duration;
    assert_eq!(super::lifecycle_days(Duration::from_secs(60)), 1);
    assert_eq!(super::lifecycle_days(Duration::from_secs(24 * 3600)), 1);
    assert_eq!(super::lifecycle_days(Duration::from_secs(24 * 3600 + 1)), 2);
    assert_eq!(super::lifecycle_days(Duration::from_secs(7 * 24 * 3600)), 7);
}

#[tokio::test]
async fn lifecycle_rule_covers_the_prefix_for_the_retention() {
    let store = S3PayloadStore::open(&config(
        "s3://nexus-bucket/nexus/prod?endpoint=http://127.0.0.1:1&access_key=k&secret_key=s",
    ))
    .await
    .unwrap();
    assert_eq!(store.lifecycle_rule_id(), "nexus-retention-nexus-prod");
    let doc: serde_json::Value =
        serde_json::from_str(&store.lifecycle_json(std::time::Duration::from_secs(36 * 3600)))
            .unwrap();
    let rule = &doc["Rules"][0];
    assert_eq!(rule["Filter"]["Prefix"], "nexus/prod/");
    assert_eq!(rule["Expiration"]["Days"], 2);
    assert_eq!(
        rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
        1
    );
    assert_eq!(rule["Status"], "Enabled");
}
