//! The bearer token of an admin listener (the Comms server's admin API, the App server's `/metrics`): a random
//! 256-bit hex string in a file of the server's data directory (mode 0600), and its constant-time check.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The admin API token: read it, or create a random one (256 bits, hex, mode 0600) if there is none. A token
/// file that group or others may read is refused.
pub fn load_or_create(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = hex::encode(secret);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).with_context(|| format!("cannot create the admin token {}", path.display()))?;
        std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write the admin token {}", path.display()))?;
        return Ok(token);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read the admin token {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the admin token {} may be read by others (mode {mode:o}); fix it with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token {}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 32 {
        bail!("the admin token {} is too short; remove the file and a new one is generated", path.display());
    }
    Ok(token)
}

/// Whether an `Authorization` header value is `Bearer <token>` (compared as SHA-256 digests, in constant time).
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(presented) = header.and_then(|v| v.strip_prefix("Bearer ")) else { return false };
    let (a, b) = (Sha256::digest(presented.trim().as_bytes()), Sha256::digest(token.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_token_is_random_private_and_refused_when_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.token");
        let t = super::load_or_create(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(super::load_or_create(&p).unwrap(), t, "kept across starts");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(super::load_or_create(&other.path().join("t")).unwrap(), t);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = super::load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn bearer() {
        assert!(super::bearer_matches(Some("Bearer abc"), "abc"));
        assert!(!super::bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!super::bearer_matches(Some("abc"), "abc"));
        assert!(!super::bearer_matches(None, "abc"));
    }
}
