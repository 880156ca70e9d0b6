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
