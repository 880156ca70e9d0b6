//! An in-process S3 server for tier-1 tests: `s3s` (which checks SigV4 signatures, presigned
//! URLs included) over `s3s-fs` (objects as files in a temporary directory), served with hyper 1
//! on `127.0.0.1:0`.
//!
//! A thin layer between the two ([`Checked`]) does what `s3s-fs` does not and the tests need:
//! it answers `NoSuchBucket` for object requests to a bucket that does not exist (`s3s-fs`
//! would create it or say `NoSuchKey`), injects faults (`503 SlowDown`, a failing part) and
//! counts requests by operation.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteObjectInput, DeleteObjectOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, PutObjectInput, PutObjectOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

/// Access key the server accepts.
pub(super) const ACCESS_KEY: &str = "nexus-test-access";
/// Secret key the server accepts.
pub(super) const SECRET_KEY: &str = "nexus-test-secret/with+odd=chars";

/// Faults to inject and requests seen.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Answers this many of the next object requests with `503 SlowDown`.
    pub slow_down: AtomicU32,
    /// Answers `UploadPart` of this part number with `400 InvalidArgument` (0: none).
    pub fail_part: AtomicU32,
    /// Never answers `UploadPart` of this part number (0: none).
    pub stall_part: AtomicU32,
    /// Parts stalled so far.
    pub stalled: AtomicU32,
    pub puts: AtomicU32,
    pub parts: AtomicU32,
    pub completes: AtomicU32,
    pub aborts: AtomicU32,
    pub slow_downs_sent: AtomicU32,
}

impl Faults {
    fn count(n: &AtomicU32) {
        n.fetch_add(1, Ordering::SeqCst);
    }

    /// `SlowDown` while `slow_down` is positive.
    fn throttle(&self) -> S3Result<()> {
        let throttled = self
            .slow_down
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttled {
            Self::count(&self.slow_downs_sent);
            return Err(s3_error!(SlowDown, "injected by the test server"));
        }
        Ok(())
    }
}

/// `s3s-fs` with a bucket check, faults and counters.
struct Checked {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    faults: Arc<Faults>,
}

impl Checked {
    /// Checks the bucket exists and applies throttling.
    fn admit(&self, bucket: &str) -> S3Result<()> {
        if !self.root.join(bucket).is_dir() {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        }
        self.faults.throttle()
    }
}

#[async_trait::async_trait]
impl S3 for Checked {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.admit(&req.input.bucket)?;
        Faults::count(&self.faults.puts);
        self.fs.put_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.admit(&req.input.bucket)?;
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.admit(&req.input.bucket)?;
        self.fs.head_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.admit(&req.input.bucket)?;
        self.fs.delete_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.admit(&req.input.bucket)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.admit(&req.input.bucket)?;
        Faults::count(&self.faults.parts);
        let fail = self.faults.fail_part.load(Ordering::SeqCst);
        let number = u32::try_from(req.input.part_number).ok();
        if fail != 0 && number == Some(fail) {
            return Err(s3_error!(InvalidArgument, "injected part failure"));
        }
        let stall = self.faults.stall_part.load(Ordering::SeqCst);
        if stall != 0 && number == Some(stall) {
            Faults::count(&self.faults.stalled);
            std::future::pending::<()>().await;
        }
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.admit(&req.input.bucket)?;
        Faults::count(&self.faults.completes);
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.admit(&req.input.bucket)?;
        Faults::count(&self.faults.aborts);
        self.fs.abort_multipart_upload(req).await
    }
}

/// A running server; stops when dropped.
pub(super) struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts a server with no bucket.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let faults = Arc::new(Faults::default());
        // s3s-fs canonicalizes its root; buckets are its subdirectories.
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let checked = Checked {
            fs,
            root: root.clone(),
            faults: Arc::clone(&faults),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(checked);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            faults,
            task,
            root,
            _dir: dir,
        }
    }

    /// True when `bucket` holds an object at the S3 key `object`.
    pub fn has_object(&self, bucket: &str, object: &str) -> bool {
        self.root.join(bucket).join(object).is_file()
    }

    /// An `s3://` URL for `bucket` on this server, with the right keys and fast retries.
    pub fn url(&self, bucket: &str, extra: &str) -> String {
        format!(
            "s3://{bucket}/nexus?endpoint={}&access_key={ACCESS_KEY}&secret_key={}\
             &retry_backoff=10ms{extra}",
            self.endpoint,
            SECRET_KEY
                .replace('/', "%2F")
                .replace('+', "%2B")
                .replace('=', "%3D"),
        )
    }
}
