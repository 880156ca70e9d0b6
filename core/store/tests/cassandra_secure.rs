//! Credentials and TLS of the Cassandra run store against a real node that requires both.
//!
//! The node is started by `scripts/cassandra.sh` with password authentication and mutual TLS
//! (clients must present a certificate); its throwaway CA and client certificate are in the data
//! dir's `tls/`. The server certificate names `DNS:cassandra.test` and not the node's IP, so
//! connecting needs `tls_server_name`. Without the variables every test fails with a message
//! saying how to start the node. A node started with `NEXUS_CASSANDRA_TLS=1` (server TLS only)
//! passes every test but `client_certificate_is_required`. Every test works in a keyspace of its
//! own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_model::error::ErrorKind;
use nexus_model::run::{RunPatch, Stage};
use nexus_store::cassandra::CassandraConfig;
use nexus_store::test_suite::sample_run;
use nexus_store::{CassandraRunStore, Inserted, RunStore, StoreError};

const NODE_ENV: &str = "NEXUS_TEST_CASSANDRA_SECURE";
const DIR_ENV: &str = "NEXUS_TEST_CASSANDRA_TLS_DIR";
const SERVER_NAME: &str = "cassandra.test";
const USER: &str = "cassandra";
const PASSWORD: &str = "cassandra";

fn how_to() -> String {
    format!(
        "these tests need a Cassandra node requiring a password and mutual TLS. Start one with \
         `NEXUS_CASSANDRA_AUTH=1 NEXUS_CASSANDRA_TLS=mtls NEXUS_CASSANDRA_PORT=9142 \
         NEXUS_CASSANDRA_STORAGE_PORT=7110 NEXUS_CASSANDRA_SSL_STORAGE_PORT=7111 \
         NEXUS_CASSANDRA_DIR=/tmp/nexus-cassandra-secure scripts/cassandra.sh start` and run \
         them with {NODE_ENV}=127.0.0.1:9142 {DIR_ENV}=/tmp/nexus-cassandra-secure/tls"
    )
}

/// Where the node is and where its TLS material is.
struct Node {
    addr: String,
    tls: PathBuf,
    /// Started with `NEXUS_CASSANDRA_TLS=mtls` (else `1`).
    mtls: bool,
}

fn node() -> Node {
    let addr =
        std::env::var(NODE_ENV).unwrap_or_else(|_| panic!("{NODE_ENV} is not set: {}", how_to()));
    let tls = PathBuf::from(
        std::env::var(DIR_ENV).unwrap_or_else(|_| panic!("{DIR_ENV} is not set: {}", how_to())),
    );
    for f in ["ca.pem", "client.pem", "client.key", "mode"] {
        assert!(
            tls.join(f).is_file(),
            "{DIR_ENV}={}: no {f} there: {}",
            tls.display(),
            how_to()
        );
    }
    let mode = std::fs::read_to_string(tls.join("mode")).unwrap_or_default();
    let mode = mode.trim();
    assert!(
        mode == "1" || mode == "mtls",
        "{DIR_ENV}: unexpected mode '{mode}': {}",
        how_to()
    );
    Node {
        addr,
        tls,
        mtls: mode == "mtls",
    }
}

/// A keyspace name of its own for each test.
fn keyspace(test: &str) -> String {
    format!(
        "t_{test}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// What to vary from the working configuration.
#[derive(Clone, Copy)]
struct Opts<'a> {
    /// The password of USER; `None`: no credentials at all.
    password: Option<&'a str>,
    tls: bool,
    ca: &'a str,
    server_name: bool,
    /// Present the client certificate when the node asks for one (mutual TLS).
    client_cert: bool,
}

const GOOD: Opts<'static> = Opts {
    password: Some(PASSWORD),
    tls: true,
    ca: "ca.pem",
    server_name: true,
    client_cert: true,
};

/// The configuration, through the URL form operators write.
fn config(ks: &str, o: Opts<'_>) -> CassandraConfig {
    let n = node();
    let user = if o.password.is_some() {
        format!("{USER}@")
    } else {
        String::new()
    };
    let mut opts = Vec::new();
    if o.tls {
        opts.push("tls=true".to_owned());
        opts.push(format!("ca={}", path(&n.tls, o.ca)));
        if o.server_name {
            opts.push(format!("tls_server_name={SERVER_NAME}"));
        }
        if o.client_cert && n.mtls {
            opts.push(format!("cert={}", path(&n.tls, "client.pem")));
            opts.push(format!("key={}", path(&n.tls, "client.key")));
        }
    }
    let url = format!("cassandra://{user}{}/{ks}?{}", n.addr, opts.join("&"));
    let mut c = CassandraConfig::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    // Set here rather than in the URL so that NEXUS_CASSANDRA_PASSWORD cannot interfere.
    c.password = o
        .password
        .map(|p| nexus_model::secret::Secret::new(p.to_owned()));
    c.request_timeout = Duration::from_secs(20);
    c.connect_timeout = Duration::from_secs(10);
    c
}

async fn open(ks: &str, o: Opts<'_>) -> Result<CassandraRunStore, StoreError> {
    CassandraRunStore::open(&config(ks, o)).await
}

async fn open_err(test: &str, o: Opts<'_>) -> StoreError {
    let ks = keyspace(test);
    let e = open(&ks, o)
        .await
        .expect_err("opening the store should have failed");
    eprintln!("{test}: {e}");
    e
}

async fn drop_keyspace(store: &CassandraRunStore, ks: &str) {
    let _ = store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_tls_round_trip() {
    let ks = keyspace("secure");
    let store = open(&ks, GOOD)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store in {ks}: {e}"));

    let run = sample_run("algo");
    assert!(matches!(
        store.insert(run.clone()).await.unwrap(),
        Inserted::Created
    ));
    assert_eq!(store.get(run.id).await.unwrap().as_ref(), Some(&run));
    let moved = store
        .transition(run.id, Stage::Buffered, Stage::Running, RunPatch::default())
        .await
        .unwrap();
    assert_eq!(moved.stage, Stage::Running);
    assert_eq!(store.get(run.id).await.unwrap(), Some(moved));

    // The node's own view of its clients: every connection is TLS, and every one past the login
    // (other tests may be half-way through theirs) is logged in as USER.
    type Client = (Option<String>, Option<String>, Option<bool>, Option<String>);
    let clients: Vec<Client> = store
        .session()
        .query_unpaged(
            "SELECT connection_stage, username, ssl_enabled, ssl_protocol FROM system_views.clients",
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<Client>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        clients
            .iter()
            .any(|(stage, user, ..)| stage.as_deref() == Some("ready")
                && user.as_deref() == Some(USER)),
        "{clients:?}"
    );
    for (stage, user, ssl, protocol) in &clients {
        assert_eq!(*ssl, Some(true), "{clients:?}");
        assert!(
            protocol.as_deref().is_some_and(|p| p.starts_with("TLSv1.")),
            "{clients:?}"
        );
        if stage.as_deref() == Some("ready") {
            assert_eq!(user.as_deref(), Some(USER), "{clients:?}");
        }
    }
    drop_keyspace(&store, &ks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthorized() {
    let e = open_err(
        "badpw",
        Opts {
            password: Some("not-the-password"),
            ..GOOD
        },
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("refused the login of user 'cassandra'"),
        "{msg}"
    );
    assert!(msg.contains("bad credentials"), "{msg}");
    assert!(!msg.contains("not-the-password"), "password echoed: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_unauthorized() {
    let e = open_err(
        "nocreds",
        Opts {
            password: None,
            ..GOOD
        },
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("requires authentication"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_naming_the_ip_is_rejected() {
    // Without tls_server_name the node's certificate is checked against 127.0.0.1.
    let e = open_err(
        "noname",
        Opts {
            server_name: false,
            ..GOOD
        },
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains("invalid peer certificate: certificate not valid for name"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_is_rejected() {
    // The client certificate is no CA: the node's chain cannot be built from it.
    let e = open_err(
        "badca",
        Opts {
            ca: "client.pem",
            ..GOOD
        },
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_connection_to_tls_port_fails() {
    let e = open_err("plain", Opts { tls: false, ..GOOD }).await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("if the nodes require TLS"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_required() {
    // The working configuration presents the client certificate (every other test); this one
    // does not, and the node ends the handshake.
    assert!(
        node().mtls,
        "the node was started with NEXUS_CASSANDRA_TLS=1, this test needs mtls: {}",
        how_to()
    );
    let e = open_err(
        "nocert",
        Opts {
            client_cert: false,
            ..GOOD
        },
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // With TLS 1.3 the node's alert may arrive after the driver sent its first request, so the
    // driver reports either the alert ("received fatal alert: CertificateRequired") or a broken
    // connection; the store's hint is there in both cases.
    assert!(
        e.to_string()
            .contains("if the nodes require client certificates"),
        "{e}"
    );
}
