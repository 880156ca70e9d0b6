//! `nexus secrets init`: the signing key and the gRPC secret every component of a distributed
//! deployment shares, as files that outlive a shell. Re-running it keeps existing files, so every
//! shell (or host, with the directory copied) that evaluates its output gets the same secrets;
//! a component restarted elsewhere no longer comes up with fresh random ones and fails with
//! "grpc secret refused".

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;

/// File name of the signing key in the directory.
pub const SIGNING_KEY: &str = "signing.key";
/// File name of the gRPC shared secret in the directory.
pub const GRPC_SECRET: &str = "grpc.secret";

/// Creates `dir` (owner only) and the two files in it unless they exist; returns the `export`
/// lines that point the components at them (absolute paths).
///
/// # Errors
/// The directory or a file cannot be created, or an existing file is not a usable secret.
pub fn init(dir: &Path) -> anyhow::Result<String> {
    nexus_model::private_fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out = String::new();
    for (name, bytes, var) in [
        (SIGNING_KEY, 48, "NEXUS__SIGNING_KEY_FILE"),
        (GRPC_SECRET, 24, "NEXUS__GRPC__SECRET_FILE"),
    ] {
        let path = dir.join(name);
        match nexus_model::private_fs::create_new_file(&path) {
            Ok(mut f) => {
                let text = base64::engine::general_purpose::STANDARD.encode(random(bytes)?);
                writeln!(f, "{text}")
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("nexus secrets: created {}", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let len = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim_ascii()
                    .len();
                anyhow::ensure!(
                    len >= 32,
                    "{} holds {len} bytes: a secret needs at least 32; remove it to get a new one",
                    path.display()
                );
                eprintln!("nexus secrets: kept {}", path.display());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
        out.push_str(&format!(
            "export {var}={}\n",
            shell_quote(&path.display().to_string())
        ));
    }
    Ok(out)
}

fn random(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf)
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn creates_once_and_keeps() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("my secrets");
        let first = init(&dir).unwrap();
        assert!(
            first.contains("export NEXUS__SIGNING_KEY_FILE='"),
            "{first}"
        );
        assert!(first.contains("/my secrets/grpc.secret'\n"), "{first}");
        let key = std::fs::read(dir.join(SIGNING_KEY)).unwrap();
        assert_eq!(key.trim_ascii().len(), 64, "48 bytes in base64");
        let mode = std::fs::metadata(dir.join(GRPC_SECRET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "owner only: {mode:o}");
        // Again: the same files, the same output.
        assert_eq!(init(&dir).unwrap(), first);
        assert_eq!(std::fs::read(dir.join(SIGNING_KEY)).unwrap(), key);
        // A file too short to be a secret is not silently used.
        std::fs::write(dir.join(GRPC_SECRET), "short").unwrap();
        let e = init(&dir).unwrap_err().to_string();
        assert!(e.contains("needs at least 32"), "{e}");
    }
}
