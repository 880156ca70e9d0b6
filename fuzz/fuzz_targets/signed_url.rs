//! Signed URLs and run tokens: arbitrary signatures and tokens never verify (nor panic), and a
//! genuine signature verifies only for exactly what it was made for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_model::sign::Signer;

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new(b"fuzzing-key-fuzzing-key-fuzzing-key!!");
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let exp: i64 = parts.next().and_then(|e| e.parse().ok()).unwrap_or(2_000_000_000);
    let sig = parts.next().unwrap_or_default();
    let now = 1_900_000_000;
    // An arbitrary signature is refused, unless it is the genuine one.
    let genuine = signer.sign_url(method, path, exp);
    let genuine_sig = genuine.rsplit("sig=").next().unwrap().to_owned();
    let verdict = signer.verify_url(method, path, exp, sig, now);
    if sig != genuine_sig {
        assert!(verdict.is_err(), "forged signature accepted: {sig:?}");
    }
    // The genuine one verifies before expiry, and for nothing else.
    assert_eq!(signer.verify_url(method, path, exp, &genuine_sig, now).is_ok(), now < exp);
    let other_path = format!("{path}x");
    assert!(signer.verify_url(method, &other_path, exp, &genuine_sig, now).is_err());
    assert!(signer.verify_url(method, path, exp.wrapping_add(1), &genuine_sig, now).is_err());
    // Run tokens: only the signer's own token opens a run, spelled exactly as the signer spells
    // it. (libFuzzer learns genuine tokens of other expiries from the comparisons below, so the
    // check is "what verifies is genuine", not "what differs from this one token is refused".)
    let run = nexus_model::run::RunId(uuid::Uuid::from_u128(7));
    let token = signer.run_token(run, exp);
    if signer.verify_run_token(run, &text, now).is_ok() {
        let own_exp: i64 = text.split('.').nth(1).and_then(|e| e.parse().ok()).expect("verified");
        assert_eq!(text, signer.run_token(run, own_exp), "a token not spelled by the signer opened a run");
    }
    let other = nexus_model::run::RunId(uuid::Uuid::from_u128(8));
    assert!(signer.verify_run_token(other, &token, now).is_err());
});
