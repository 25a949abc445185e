//! Data at rest is for its owner only: folders 0700, files 0600, whatever the umask (SECURITY.md, "Data at
//! rest"). The binary also sets its umask to 0o077 at start; these helpers make the key folders and the SQLite
//! files private even where the umask was not set (a library caller, a folder that existed before).

use std::io;
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700, and sets an existing `dir` itself to 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates an empty file at `path` with mode 0600 if there is none (an existing file is left as it is). SQLite
/// creates its `-wal` and `-shm` files with the mode of the database file, so a database created this way first
/// keeps all three private.
pub fn create_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Sets the process umask to 0o077, so every file and folder the process creates afterwards is its owner's
/// only. Call it first thing in `main`, before any thread starts (the umask is process-wide).
#[cfg(unix)]
pub fn restrict_umask() {
    // SAFETY: umask only swaps an integer in the process; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folders_and_files_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let f = dir.join("x.db");
        create_file(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        create_file(&f).unwrap();
    }
}
