//! Isolation of algorithm processes (local-process executor): the `run_as` user, the Landlock
//! launcher `nexus sandbox-exec`, and the start-up decision of what is enforced.
//!
//! * [`executor_isolation`] runs at start-up (standalone and the local receiver): it resolves
//!   `executor.run_as` (only root may switch users; root without it is warned about), probes the
//!   launcher and the kernel (`nexus sandbox-exec --probe` in a child process, so nothing here
//!   restricts the server itself), and logs once what algorithms are confined by.
//! * [`sandbox_exec`] is the hidden subcommand the executor starts algorithms through: it sets
//!   `no_new_privs`, applies a Landlock ruleset (read-only: system directories, `PATH`, the
//!   command's directory, `executor.read_only_paths`; read-write: the run's own work directory,
//!   `executor.read_write_paths`, a few device files; nothing else, in particular not the data
//!   directory, the work root or other runs' directories) and executes the command in its place:
//!   same pid, same process group, the ruleset inherited across `exec`.
//!
//! It never runs anything with `unsafe`: the user switch is done by the standard library's
//! `Command::uid`/`gid` in the executor, the confinement by the `landlock` crate, `exec` by `nix`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nexus_executor::LocalExecutorConfig;
use nexus_executor::local::{Launcher, RunAs, default_work_root};
use serde::{Deserialize, Serialize};

use crate::config::ExecutorSection;

/// First word of the probe's answer (`nexus sandbox-exec --probe`).
const PROBE_PREFIX: &str = "nexus-sandbox";

/// Read-only for every confined algorithm (besides the `PATH` directories): programs, libraries, configuration (TLS roots, DNS,
/// users), and the kernel's views of the process (`/proc` entries of processes outside the
/// algorithm's Landlock domain stay unreadable: Landlock denies ptrace-class access to them).
/// `/run/systemd/resolve` holds the target of a systemd-resolved `/etc/resolv.conf` link, and
/// `/nix/store` every program and library on NixOS; missing paths grant nothing.
const SYSTEM_READ_ONLY: [&str; 11] = [
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys",
    "/run/systemd/resolve",
    "/nix/store",
];
/// Device files algorithms may read (random numbers).
const DEVICES_READ_ONLY: [&str; 2] = ["/dev/urandom", "/dev/random"];
/// Device files algorithms may write.
const DEVICES_READ_WRITE: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

/// `executor.confine`: filesystem confinement of algorithm processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confine {
    /// Landlock where the kernel offers it; otherwise file permissions and `run_as` only (logged
    /// once at start-up).
    #[default]
    Auto,
    /// Landlock or refuse to start.
    Landlock,
    /// No confinement: algorithms are started directly.
    Off,
}

/// What the start-up decided for algorithm processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The user algorithms run as, if not the server's.
    pub run_as: Option<RunAs>,
    /// The confining launcher, if used.
    pub launcher: Option<Launcher>,
    /// The Landlock ABI the launcher enforces (`None`: no Landlock).
    pub landlock_abi: Option<u32>,
}

/// Inputs of [`executor_isolation`] (from the `executor` section and the process' own paths).
#[derive(Debug, Clone)]
pub struct IsolationRequest<'a> {
    /// `executor.run_as`.
    pub run_as: Option<&'a str>,
    /// `executor.confine`.
    pub confine: Confine,
    /// `executor.launcher`, else this binary.
    pub launcher: Option<&'a Path>,
    /// `executor.read_only_paths`.
    pub read_only: &'a [PathBuf],
    /// `executor.read_write_paths`.
    pub read_write: &'a [PathBuf],
    /// The server's private paths (data directory, key files, work root): no rule may cover them.
    pub protected: &'a [PathBuf],
}

/// Resolves `run_as` (`name`, `uid`, `name:group` or `uid:gid`) to ids.
///
/// # Errors
/// An unknown user or group, or a malformed value.
pub fn resolve_run_as(spec: &str) -> anyhow::Result<RunAs> {
    use nix::unistd::{Gid, Group, Uid, User};
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (spec.trim(), None),
    };
    if user.is_empty() {
        bail!("executor.run_as: '{spec}' names no user (expected a user name, uid or uid:gid)");
    }
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .with_context(|| format!("executor.run_as: looking up uid {uid}"))?,
        Err(_) => User::from_name(user)
            .with_context(|| format!("executor.run_as: looking up user '{user}'"))?,
    };
    let (uid, default_gid) = match (user.parse::<u32>(), &found) {
        (_, Some(u)) => (u.uid.as_raw(), Some(u.gid.as_raw())),
        (Ok(uid), None) => (uid, None),
        (Err(_), None) => bail!(
            "executor.run_as: user '{user}' does not exist on this machine (create it, e.g. `useradd --system --no-create-home nexus-algo`, or give a uid:gid)"
        ),
    };
    let gid = match group.filter(|g| !g.is_empty()) {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .with_context(|| format!("executor.run_as: looking up group '{g}'"))?
                .map(|gr| gr.gid.as_raw())
                .with_context(|| {
                    format!("executor.run_as: group '{g}' does not exist on this machine")
                })?,
        },
        None => default_gid.with_context(|| {
            format!("executor.run_as: uid {uid} has no entry in the user database; give its group as uid:gid")
        })?,
    };
    if uid == 0 || Gid::from_raw(gid) == Gid::from_raw(0) {
        bail!(
            "executor.run_as: '{spec}' is root (uid {uid}, gid {gid}); name an unprivileged user such as nobody"
        );
    }
    Ok(RunAs { uid, gid })
}

/// Decides and logs how algorithm processes are isolated (see the module docs).
///
/// # Errors
/// `run_as` without root, an unknown `run_as` user, `confine: landlock` where the launcher or the
/// kernel cannot enforce it, a read-only or read-write path that contains a protected path.
pub async fn executor_isolation(req: IsolationRequest<'_>) -> anyhow::Result<Isolation> {
    let root = nix::unistd::geteuid().is_root();
    let run_as = match req.run_as.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) => {
            if !root {
                bail!(
                    "executor.run_as is set ('{spec}') but nexus runs as uid {}, not root: only root can start algorithms as another user; unset executor.run_as or start nexus as root",
                    nix::unistd::geteuid()
                );
            }
            Some(resolve_run_as(spec)?)
        }
        None => {
            if root {
                tracing::warn!(
                    "nexus runs as root and executor.run_as is not set: algorithms run as root and file permissions do not keep them from the signing key and the stores; set executor.run_as (e.g. nobody)"
                );
            }
            None
        }
    };
    for p in req.read_only.iter().chain(req.read_write) {
        if let Some(hit) = covers_protected(p, req.protected) {
            bail!(
                "executor: {} would give algorithms access to {}, which holds the server's keys or stores; choose paths outside it",
                p.display(),
                hit.display()
            );
        }
    }
    if req.confine != Confine::Off {
        for dir in SYSTEM_READ_ONLY {
            if let Some(hit) = covers_protected(Path::new(dir), req.protected) {
                tracing::warn!(
                    dir,
                    protected = %hit.display(),
                    "a private path of the server lies in a system directory algorithms may read: under Landlock they lose that whole directory (and may fail); move it out"
                );
            }
        }
    }
    let (launcher, abi) = match req.confine {
        Confine::Off => (None, None),
        Confine::Auto | Confine::Landlock => {
            let program = match req.launcher {
                Some(p) => Some(p.to_path_buf()),
                None => std::env::current_exe()
                    .ok()
                    .filter(|p| p.file_stem().is_some_and(|n| n == "nexus")),
            };
            let probed = match &program {
                Some(p) => probe(p, run_as).await,
                None => Err(
                    "this process is not the nexus binary; set executor.launcher to it".to_owned(),
                ),
            };
            match (probed, req.confine) {
                (Ok(Some(abi)), _) => (program, Some(abi)),
                (Ok(None), Confine::Landlock) => bail!(
                    "executor.confine is landlock but this kernel does not offer Landlock (Linux >= 5.13 with landlock in the lsm= boot parameter); use confine: auto to run with file permissions and run_as only"
                ),
                (Err(e), Confine::Landlock) => {
                    bail!("executor.confine is landlock but the launcher cannot be used: {e}")
                }
                // Without Landlock the launcher still sets no_new_privs (no setuid escalation).
                (Ok(None), _) => (program, None),
                (Err(e), _) => {
                    tracing::warn!(error = %e, "the algorithm launcher is unavailable: algorithms start directly");
                    (None, None)
                }
            }
        }
    };
    let user = run_as.map_or_else(
        || "the server's own user".to_owned(),
        |u| format!("uid {} gid {}", u.uid, u.gid),
    );
    match abi {
        Some(abi) => tracing::info!(
            landlock_abi = abi,
            run_as = %user,
            "algorithms confined by Landlock to their own work directory, system directories and PATH"
        ),
        None => tracing::warn!(
            run_as = %user,
            "landlock not available: algorithms are confined by file permissions and run_as only"
        ),
    }
    let launcher = launcher.map(|program| Launcher {
        program,
        args: launcher_args(abi.is_some(), &req),
    });
    Ok(Isolation {
        run_as,
        launcher,
        landlock_abi: abi,
    })
}

/// Builds the local executor's configuration from the `executor` section: work root, `run_as`,
/// launcher (see [`executor_isolation`]). `protected` are the server's private paths (data
/// directory, key files); the work root is added to them.
///
/// # Errors
/// As [`executor_isolation`].
pub async fn local_executor_config(
    section: &ExecutorSection,
    protected: &[PathBuf],
) -> anyhow::Result<LocalExecutorConfig> {
    let extra_path = if section.extra_path.is_empty() {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .into_iter()
            .collect()
    } else {
        section.extra_path.clone()
    };
    let work_root = absolute(&section.work_root.clone().unwrap_or_else(default_work_root));
    let mut protected: Vec<PathBuf> = protected.iter().map(|p| absolute(p)).collect();
    protected.push(work_root.clone());
    let ca_file = match &section.ca_file {
        Some(ca) => {
            let ca = absolute(ca);
            nexus_http::tls::read_certs(&ca)
                .map_err(|e| anyhow::anyhow!("executor.ca_file: {e}"))?;
            Some(ca)
        }
        None => None,
    };
    // Algorithms read the CA file: granted like a read-only path (and refused if it would
    // expose a protected one).
    let read_only: Vec<PathBuf> = section
        .read_only_paths
        .iter()
        .cloned()
        .chain(ca_file.clone())
        .collect();
    let isolation = executor_isolation(IsolationRequest {
        run_as: section.run_as.as_deref(),
        confine: section.confine,
        launcher: section.launcher.as_deref(),
        read_only: &read_only,
        read_write: &section.read_write_paths,
        protected: &protected,
    })
    .await?;
    Ok(LocalExecutorConfig {
        extra_path,
        work_root,
        default_max_concurrent: section.default_max_concurrent,
        max_log_bytes: section.max_log_bytes,
        run_as: isolation.run_as,
        launcher: isolation.launcher,
        state_dir: None,
        ca_file,
    })
}

/// `p` made absolute against the current directory (not resolved: it may not exist yet).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The launcher's leading arguments (the executor appends `--work-dir D -- cmd args`).
fn launcher_args(landlock: bool, req: &IsolationRequest<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["sandbox-exec".into()];
    if landlock {
        // Fail closed: the start-up saw Landlock, so a launch without it is an error.
        args.push("--require-landlock".into());
    }
    for (flag, paths) in [
        ("--ro", req.read_only),
        ("--rw", req.read_write),
        ("--deny", req.protected),
    ] {
        for p in paths {
            args.push(flag.into());
            args.push(p.into());
        }
    }
    args
}

/// The protected path that `p` is, contains or lies in, if any.
fn covers_protected<'a>(p: &Path, protected: &'a [PathBuf]) -> Option<&'a PathBuf> {
    let p = canonical(p);
    protected.iter().find(|q| {
        let q = canonical(q);
        q.starts_with(&p) || p.starts_with(&q)
    })
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs `<launcher> sandbox-exec --probe` as the algorithms' user (so a launcher that user cannot
/// execute shows up now, not at the first launch): `Ok(Some(abi))` when it enforces Landlock,
/// `Ok(None)` when the kernel offers none, `Err` when the launcher does not answer as nexus does.
async fn probe(launcher: &Path, run_as: Option<RunAs>) -> Result<Option<u32>, String> {
    let mut cmd = tokio::process::Command::new(launcher);
    cmd.args(["sandbox-exec", "--probe"])
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd.output().await.map_err(|e| {
        let who = run_as.map_or_else(String::new, |u| format!(" as uid {}", u.uid));
        format!("cannot run {}{who}: {e}", launcher.display())
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answer = text
        .lines()
        .find_map(|l| l.strip_prefix(PROBE_PREFIX))
        .map(str::trim);
    match answer {
        Some("landlock=unsupported") if out.status.success() => Ok(None),
        Some(a) if out.status.success() => a
            .strip_prefix("landlock-abi=")
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("unexpected probe answer '{a}'")),
        _ => Err(format!(
            "{} sandbox-exec --probe did not answer as nexus does ({}): {}",
            launcher.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Arguments of the hidden `nexus sandbox-exec` subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SandboxExecArgs {
    /// Print what the kernel enforces (`nexus-sandbox landlock-abi=N` or
    /// `nexus-sandbox landlock=unsupported`) and exit.
    #[arg(long)]
    pub probe: bool,
    /// Fail instead of running the command unconfined when Landlock is not enforced.
    #[arg(long)]
    pub require_landlock: bool,
    /// The run's work directory (read-write).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Extra read-only path.
    #[arg(long = "ro")]
    pub read_only: Vec<PathBuf>,
    /// Extra read-write path.
    #[arg(long = "rw")]
    pub read_write: Vec<PathBuf>,
    /// A path no rule may cover (rules that contain it are dropped).
    #[arg(long = "deny")]
    pub deny: Vec<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true)]
    pub command: Vec<OsString>,
}

/// Confines this process and executes the command in its place; returns only on failure.
///
/// # Errors
/// A missing command, a ruleset the kernel rejects, Landlock missing with `--require-landlock`,
/// or `exec` failing (unknown command).
pub fn sandbox_exec(args: SandboxExecArgs) -> anyhow::Result<()> {
    let rules = if args.probe {
        Vec::new()
    } else {
        let Some(program) = args.command.first() else {
            bail!("no command given (usage: nexus sandbox-exec [OPTIONS] -- COMMAND [ARGS]...)");
        };
        rules(&args, Path::new(program))
    };
    let abi = restrict(&rules)?;
    if args.probe {
        match abi {
            Some(abi) => println!("{PROBE_PREFIX} landlock-abi={abi}"),
            None => println!("{PROBE_PREFIX} landlock=unsupported"),
        }
        return Ok(());
    }
    if args.require_landlock && abi.is_none() {
        bail!("Landlock is required (the server saw it at start-up) but was not enforced");
    }
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument contains a NUL byte")?;
    let Err(err) = nix::unistd::execvp(&argv[0], &argv);
    bail!(
        "cannot execute '{}': {err}",
        args.command[0].to_string_lossy()
    )
}

/// What a confined algorithm may use: `(path, writable)`, minus what would expose a `--deny`
/// path (each dropped rule is reported on stderr, which is the run's log).
fn rules(args: &SandboxExecArgs, program: &Path) -> Vec<(PathBuf, bool)> {
    let mut ro: Vec<PathBuf> = SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect();
    ro.extend(DEVICES_READ_ONLY.iter().map(PathBuf::from));
    ro.extend(args.read_only.iter().cloned());
    if let Some(path) = std::env::var_os("PATH") {
        ro.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    if program.as_os_str().as_bytes().contains(&b'/')
        && let Some(dir) = program.parent()
    {
        ro.push(dir.to_path_buf());
    }
    let mut rw: Vec<PathBuf> = DEVICES_READ_WRITE.iter().map(PathBuf::from).collect();
    rw.extend(args.read_write.iter().cloned());
    // The run's own directory lies inside the (denied) work root by design: granted as is.
    let mut rules: Vec<(PathBuf, bool)> = args.work_dir.iter().map(|d| (d.clone(), true)).collect();
    for (paths, writable) in [(ro, false), (rw, true)] {
        for p in paths {
            if let Some(hit) = covers_protected(&p, &args.deny) {
                eprintln!(
                    "[nexus sandbox] not granting {}: it would expose {}",
                    p.display(),
                    hit.display()
                );
                continue;
            }
            rules.push((p, writable));
        }
    }
    rules
}

/// Sets `no_new_privs` and restricts this process to `rules` with Landlock; returns the ABI
/// enforced, `None` when the kernel offers no Landlock.
#[cfg(target_os = "linux")]
fn restrict(rules: &[(PathBuf, bool)]) -> anyhow::Result<Option<u32>> {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
        Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    };
    // The newest ABI this code was written for; older kernels enforce the rights they know (best
    // effort) and the status says whether anything was enforced.
    let abi = ABI::V6;
    let all = AccessFs::from_all(abi);
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .context("handling file access")?
        // Signals and abstract sockets stay within the run (Linux >= 6.12), where offered.
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .context("scoping signals and sockets")?
        .create()
        .context("creating the Landlock ruleset")?;
    for (path, writable) in rules {
        // Paths that do not exist on this machine (e.g. /lib32) grant nothing.
        let Ok(fd) = PathFd::new(path) else { continue };
        let access = if *writable {
            all
        } else {
            AccessFs::from_read(abi)
        };
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .with_context(|| format!("granting {}", path.display()))?;
    }
    // Sets no_new_privs first, whether or not Landlock is there.
    let status = created
        .restrict_self()
        .context("enforcing the Landlock ruleset")?;
    Ok(match status.landlock {
        LandlockStatus::Available { effective_abi, .. }
            if status.ruleset != RulesetStatus::NotEnforced =>
        {
            // ABI is non-exhaustive (no `as` cast across crates); it displays as its number.
            effective_abi.to_string().parse().ok()
        }
        _ => None,
    })
}

/// No Landlock outside Linux: nothing is enforced (the start-up logs it; `confine: landlock`
/// refuses to start).
#[cfg(not(target_os = "linux"))]
fn restrict(_rules: &[(PathBuf, bool)]) -> anyhow::Result<Option<u32>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_accepts_names_and_ids_and_refuses_root_and_unknown_users() {
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("the test machine has a 'nobody' user");
        let want = RunAs {
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
        };
        assert_eq!(resolve_run_as("nobody").unwrap(), want);
        assert_eq!(resolve_run_as(&want.uid.to_string()).unwrap(), want);
        assert_eq!(
            resolve_run_as("4242:4343").unwrap(),
            RunAs {
                uid: 4242,
                gid: 4343
            }
        );
        let e = resolve_run_as("root").unwrap_err().to_string();
        assert!(e.contains("unprivileged"), "{e}");
        let e = resolve_run_as("0:0").unwrap_err().to_string();
        assert!(e.contains("is root"), "{e}");
        let e = resolve_run_as("no-such-user-xyz").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = resolve_run_as("4242").unwrap_err().to_string();
        assert!(e.contains("uid:gid"), "{e}");
    }

    #[test]
    fn protected_paths_are_found_above_and_below() {
        let protected = vec![PathBuf::from("/srv/nexus/data")];
        assert!(covers_protected(Path::new("/srv"), &protected).is_some());
        assert!(covers_protected(Path::new("/srv/nexus/data/objects"), &protected).is_some());
        assert!(covers_protected(Path::new("/srv/models"), &protected).is_none());
    }

    #[test]
    fn rules_grant_the_run_its_directory_and_never_a_protected_path() {
        let args = SandboxExecArgs {
            work_dir: Some(PathBuf::from("/tmp/nexus-work-0/run-1")),
            read_only: vec![PathBuf::from("/srv/models"), PathBuf::from("/srv")],
            read_write: vec![PathBuf::from("/tmp/nexus-work-0")],
            deny: vec![
                PathBuf::from("/srv/nexus-data"),
                PathBuf::from("/tmp/nexus-work-0"),
            ],
            command: vec!["/opt/algo/bin/run".into()],
            ..SandboxExecArgs::default()
        };
        let rules = rules(&args, Path::new("/opt/algo/bin/run"));
        let has = |p: &str, w: bool| rules.contains(&(PathBuf::from(p), w));
        assert!(has("/tmp/nexus-work-0/run-1", true), "{rules:?}");
        assert!(has("/srv/models", false), "{rules:?}");
        assert!(
            has("/opt/algo/bin", false),
            "the command's directory: {rules:?}"
        );
        assert!(has("/usr", false) && has("/dev/null", true), "{rules:?}");
        // `/srv` contains the data dir; the work root holds other runs' directories.
        assert!(
            !rules.iter().any(|(p, _)| p == Path::new("/srv")),
            "{rules:?}"
        );
        assert!(
            !rules
                .iter()
                .any(|(p, _)| p == Path::new("/tmp/nexus-work-0")),
            "{rules:?}"
        );
    }

    #[tokio::test]
    async fn a_launcher_that_is_not_nexus_refuses_landlock_and_is_dropped_under_auto() {
        let req = IsolationRequest {
            run_as: None,
            confine: Confine::Landlock,
            launcher: Some(Path::new("/bin/true")),
            read_only: &[],
            read_write: &[],
            protected: &[],
        };
        let e = executor_isolation(req.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("confine is landlock but the launcher cannot be used")
                && e.contains("did not answer as nexus does"),
            "{e}"
        );
        let auto = executor_isolation(IsolationRequest {
            confine: Confine::Auto,
            ..req
        })
        .await
        .unwrap();
        assert_eq!((auto.launcher, auto.landlock_abi), (None, None));
    }

    #[tokio::test]
    async fn run_as_without_root_is_refused_and_a_bad_path_is_named() {
        let data = PathBuf::from("/srv/nexus/data");
        let req = IsolationRequest {
            run_as: None,
            confine: Confine::Off,
            launcher: None,
            read_only: &[PathBuf::from("/srv")],
            read_write: &[],
            protected: std::slice::from_ref(&data),
        };
        let e = executor_isolation(req.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/srv would give algorithms access to"), "{e}");
        let ok = executor_isolation(IsolationRequest {
            read_only: &[],
            ..req.clone()
        })
        .await
        .unwrap();
        assert_eq!(ok.launcher, None);
        if !nix::unistd::geteuid().is_root() {
            let e = executor_isolation(IsolationRequest {
                run_as: Some("nobody"),
                read_only: &[],
                ..req
            })
            .await
            .unwrap_err()
            .to_string();
            assert!(e.contains("not root"), "{e}");
        }
    }
}
