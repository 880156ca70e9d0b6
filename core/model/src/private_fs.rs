//! Private files and directories: everything the server writes (run store, object store, payload
//! files, signing key, lock files, work directories) is created `0600` / `0700` from the start.
//!
//! Invariants:
//! * New files and directories get their private mode in the `open(2)` / `mkdir(2)` call itself
//!   (the umask can only take bits away), never by a `chmod` after the fact, so there is no window
//!   in which another user could open them.
//! * Files and directories left by an older version with looser modes are tightened when they are
//!   opened again ([`tighten`]): only the group and other bits are removed, the owner's are kept.
//!
//! It must not follow a path chosen by an algorithm: the callers pass the server's own paths.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the server creates: read and write for its owner only.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory the server creates: its owner only.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and its missing parents, each new one `0700`. An existing directory is left as
/// it is (see [`tighten`]).
///
/// # Errors
/// As [`DirBuilder::create`].
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates the new file `path` (it must not exist), `0600`, open for writing.
///
/// # Errors
/// As [`OpenOptions::open`]; `AlreadyExists` when the file exists.
pub fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens `path` for reading and writing, creating it `0600` when missing and tightening it when
/// an older version left it readable by others; the content is kept.
///
/// # Errors
/// As [`OpenOptions::open`] and [`tighten`].
pub fn open_or_create(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    tighten_file(&file, path)?;
    Ok(file)
}

/// Removes the group and other permission bits of the existing `path` (a file or directory the
/// server owns, e.g. written by an older version); a missing path is fine.
///
/// # Errors
/// When the path cannot be inspected or its mode cannot be changed.
pub fn tighten(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        // Never chmod through a link: the target is not necessarily ours.
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::info!(path = %path.display(), old_mode = format!("{mode:o}"), new_mode = format!("{:o}", mode & 0o700), "made private (it was readable by other users)");
    }
    Ok(())
}

fn tighten_file(file: &File, path: &Path) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::info!(path = %path.display(), old_mode = format!("{mode:o}"), "made private (it was readable by other users)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_directories_are_private_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let nested = d.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&d.path().join(p)), 0o700, "{p}");
        }
        let f = nested.join("f");
        drop(create_new_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert_eq!(
            create_new_file(&f).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let g = nested.join("g");
        drop(open_or_create(&g).unwrap());
        assert_eq!(mode(&g), 0o600);
    }

    #[test]
    fn loose_modes_left_by_older_versions_are_tightened() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("runs.db");
        std::fs::write(&f, b"keep").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_or_create(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
        let sub = d.path().join("objects");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        tighten(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        tighten(&d.path().join("missing")).unwrap();
    }
}
