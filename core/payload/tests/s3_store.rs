//! The `PayloadStore` contract against a real S3-compatible server.
//!
//! Run by the integration tier, which starts SeaweedFS (`scripts/seaweedfs.sh`) and sets
//! `NEXUS_TEST_S3` to an `s3://` URL with its endpoint and keys, e.g.
//! `s3://nexus-it?endpoint=http://127.0.0.1:8333&access_key=...&secret_key=...`. Each test
//! works in a bucket of its own (the URL's bucket name plus a random suffix), created here.
//! Without the variable every test fails with a message saying how to start the server.

use async_trait::async_trait;
use bytes::Bytes;
use nexus_model::error::ErrorKind;
use nexus_payload::test_suite::{self, PlainHttp};
use nexus_payload::{PayloadStore, S3Config, S3PayloadStore};

const ENV: &str = "NEXUS_TEST_S3";

fn url() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set: these tests need a real S3-compatible server. Start SeaweedFS \
             with `scripts/seaweedfs.sh start` and run them with \
             {ENV}='s3://nexus-it?endpoint=http://127.0.0.1:8333&access_key=<key>&secret_key=<secret>' \
             (scripts/integration.sh does both)"
        )
    })
}

/// The configured server with a bucket of this test's own (created), and `tune` applied.
async fn open(test: &str, tune: impl FnOnce(&mut S3Config)) -> S3PayloadStore {
    let mut c = S3Config::from_url(&url()).unwrap_or_else(|e| panic!("{ENV}: {e}"));
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let base: String = c.bucket.chars().take(40).collect();
    c.bucket = format!("{base}-{test}-{suffix}");
    tune(&mut c);
    let s = S3PayloadStore::open(&c)
        .await
        .unwrap_or_else(|e| panic!("cannot open the S3 store: {e}"));
    s.create_bucket()
        .await
        .unwrap_or_else(|e| panic!("cannot create bucket {}: {e}", c.bucket));
    s
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let s = open("conf", |_| {}).await;
    test_suite::run_all(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls() {
    let s = open("urls", |_| {}).await;
    test_suite::signed_urls_over_http(&s, &Plain(reqwest::Client::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload() {
    let s = open("mpu", |c| {
        c.multipart_threshold = 5 * 1024 * 1024 + 1;
        c.part_size = 5 * 1024 * 1024;
    })
    .await;
    let big: Bytes = (0..12 * 1024 * 1024 + 7)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    s.put("results/a/big", big.clone())
        .await
        .expect("multipart put");
    let got = s.get("results/a/big").await.expect("get").expect("present");
    assert!(got == big, "multipart object differs");
    s.delete("results/a/big").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_from_a_reader() {
    let s = open("mpr", |c| {
        c.multipart_threshold = 5 * 1024 * 1024 + 1;
        c.part_size = 5 * 1024 * 1024;
    })
    .await;
    let big = test_suite::generated(12 * 1024 * 1024 + 7, 11);
    s.put_reader(
        "results/a/big",
        test_suite::reader(&big, 65_536),
        big.len() as u64,
    )
    .await
    .expect("multipart put_reader");
    let got = s.get("results/a/big").await.expect("get").expect("present");
    assert!(got == big, "multipart object differs");
    // One byte short: aborted, the object unchanged.
    let err = s
        .put_reader(
            "results/a/big",
            test_suite::reader(&big.slice(1..), 65_536),
            big.len() as u64,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{err}");
    let got = s.get("results/a/big").await.expect("get").expect("present");
    assert!(got == big, "a failed put_reader changed the object");
    s.delete("results/a/big").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() {
    let mut c = S3Config::from_url(&url()).unwrap_or_else(|e| panic!("{ENV}: {e}"));
    c.secret_key = Some(nexus_model::secret::Secret::new(
        "certainly-not-the-secret".to_owned(),
    ));
    c.access_key = c.access_key.or_else(|| Some("nexus-it".to_owned()));
    let s = S3PayloadStore::open(&c).await.expect("open");
    let err = s
        .put("results/a/1", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    // SignatureDoesNotMatch (AWS S3, SeaweedFS, MinIO): the secret is wrong.
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert!(err.message.contains("refused the credentials"), "{err}");
    assert!(!err.message.contains("certainly-not-the-secret"), "{err}");
    assert!(s.get("results/a/1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_an_error() {
    let mut c = S3Config::from_url(&url()).unwrap_or_else(|e| panic!("{ENV}: {e}"));
    c.bucket = format!(
        "nexus-missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let s = S3PayloadStore::open(&c).await.expect("open");
    let err = s.get("results/a/1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains(&format!("bucket '{}' does not exist", c.bucket)),
        "{err}"
    );
    let err = s
        .put("results/a/1", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.message.contains(&c.bucket), "{err}");
}

/// The retention rule is installed next to the bucket's other rules, replaced (not duplicated)
/// when applied again, and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_lifecycle_rule_is_installed_and_replaced() {
    let store = open("lifecycle", |_| {}).await;
    assert_eq!(store.installed_lifecycle_days().await.unwrap(), None);
    let days = store
        .apply_lifecycle(std::time::Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(days, 7);
    assert_eq!(store.installed_lifecycle_days().await.unwrap(), Some(7));
    store
        .apply_lifecycle(std::time::Duration::from_secs(30 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(store.installed_lifecycle_days().await.unwrap(), Some(30));
}
