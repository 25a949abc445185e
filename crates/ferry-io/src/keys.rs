//! SSH key pairs: generation, OpenSSH files with safe permissions, fingerprints.
//!
//! The Connector's key pair is its identity: it authenticates SFTP sessions and signs every web
//! service call ([`crate::httpsig`]). The private key is generated on the ERP server, written in
//! OpenSSH format with mode 0600 and never sent anywhere; only the public key (an OpenSSH
//! `authorized_keys` line) and its fingerprint (`SHA256:…`, the same text `ssh-keygen -l` prints)
//! leave the machine. Errors name the file and the fix, never key material.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::{self, HashAlg, LineEnding};
pub use russh::keys::{PrivateKey, PublicKey};

/// Smallest RSA modulus accepted anywhere in Ferry.
pub const MIN_RSA_BITS: u32 = 2048;

/// Failure to create, read, parse or write a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error("key file {path} does not exist; create one first or fix the path in the config")]
    NotFound { path: PathBuf },
    /// Refusing to replace an existing key.
    #[error("key file {path} already exists; move it away first if you really want a new key")]
    AlreadyExists { path: PathBuf },
    /// The private key file can be read or written by other users.
    #[error("private key {path} is accessible by other users (mode {mode:03o}); run `chmod 600 {path}`")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// Windows: the private key file's ACL lets other accounts read it.
    #[error(
        "private key {path} can be read by {who} (its ACL); allow only the account the Connector runs as: \
         icacls \"{path}\" /inheritance:r /grant:r \"%USERNAME%:F\" \"SYSTEM:F\" \"Administrators:F\""
    )]
    InsecureAcl { path: PathBuf, who: String },
    /// The private key is protected by a passphrase.
    #[error(
        "private key {path} is encrypted with a passphrase; ferry needs an unencrypted key \
         (remove the passphrase with `ssh-keygen -p -N '' -f {path}`)"
    )]
    Encrypted { path: PathBuf },
    /// The file is not an OpenSSH private key.
    #[error("private key {path} is not a valid OpenSSH private key ({reason}); regenerate it")]
    InvalidPrivateKey { path: PathBuf, reason: String },
    /// The text is not an OpenSSH public key line.
    #[error("not a valid OpenSSH public key ({reason}); expect a line like `ssh-ed25519 AAAA… comment`")]
    InvalidPublicKey { reason: String },
    /// The algorithm or key size is not one Ferry accepts.
    #[error("unsupported key {what}; use rsa2048, rsa3072, rsa4096 or ed25519")]
    Unsupported { what: String },
    /// Reading or writing the file failed.
    #[error("cannot {action} key file {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The key library failed (generation or encoding).
    #[error("ssh key operation failed: {0}")]
    Ssh(#[from] ssh_key::Error),
}

/// The key types `ferry connector init` can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsa2048" => Ok(Self::Rsa2048),
            "rsa3072" => Ok(Self::Rsa3072),
            "rsa4096" => Ok(Self::Rsa4096),
            "ed25519" => Ok(Self::Ed25519),
            other => Err(KeyError::Unsupported { what: format!("algorithm {other:?}") }),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
            Self::Ed25519 => "ed25519",
        })
    }
}

/// Generates a new key pair (RSA-4096 takes a few seconds).
pub fn generate(alg: KeyAlgorithm) -> Result<PrivateKey, KeyError> {
    let mut rng = russh::keys::key::safe_rng();
    let bits = match alg {
        KeyAlgorithm::Ed25519 => {
            return Ok(PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)?);
        }
        KeyAlgorithm::Rsa2048 => 2048,
        KeyAlgorithm::Rsa3072 => 3072,
        KeyAlgorithm::Rsa4096 => 4096,
    };
    Ok(PrivateKey::from(RsaKeypair::random(&mut rng, bits)?))
}

/// Checks that a (e.g. just registered) public key is one Ferry accepts: Ed25519, or RSA with at
/// least [`MIN_RSA_BITS`] bits.
pub fn check_public_key(key: &PublicKey) -> Result<(), KeyError> {
    match key.key_data() {
        ssh_key::public::KeyData::Ed25519(_) => Ok(()),
        ssh_key::public::KeyData::Rsa(rsa) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
        ssh_key::public::KeyData::Rsa(rsa) => {
            Err(KeyError::Unsupported { what: format!("size: rsa with {} bits", rsa.key_size()) })
        }
        _ => Err(KeyError::Unsupported { what: format!("algorithm {}", key.algorithm()) }),
    }
}

/// Writes `key` in OpenSSH format with mode 0600.
///
/// Without `overwrite`, an existing file is an error and the file is created atomically
/// (`O_EXCL`). With `overwrite`, the key goes to a temporary file beside `path` that is then
/// renamed over it, so a crash never leaves a half-written key.
pub fn write_private_key(path: &Path, key: &PrivateKey, overwrite: bool) -> Result<(), KeyError> {
    let pem = key.to_openssh(LineEnding::LF)?;
    if !overwrite {
        return write_new(path, pem.as_bytes(), 0o600, false);
    }
    let tmp = tmp_path(path);
    write_new(&tmp, pem.as_bytes(), 0o600, true)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_err("replace", path, e)))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Writes `key` as one OpenSSH public key line (`<alg> <base64> <comment>`), mode 0644,
/// replacing any existing file.
pub fn write_public_key(path: &Path, key: &PublicKey, comment: &str) -> Result<(), KeyError> {
    let mut key = key.clone();
    key.set_comment(comment);
    let line = format!("{}\n", key.to_openssh()?);
    let tmp = tmp_path(path);
    write_new(&tmp, line.as_bytes(), 0o644, true)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_err("replace", path, e)))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Reads an unencrypted OpenSSH private key, refusing (on Unix) a file that group or others may
/// read or write.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let mut file = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KeyError::NotFound { path: path.to_owned() },
        _ => io_err("read", path, e),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = file.metadata().map_err(|e| io_err("read", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions { path: path.to_owned(), mode });
        }
    }
    #[cfg(windows)]
    {
        let foreign = crate::acl::foreign_readers(path).map_err(|e| io_err("read the ACL of", path, e))?;
        if !foreign.is_empty() {
            let who = foreign.iter().map(|s| crate::acl::describe_sid(s)).collect::<Vec<_>>().join(", ");
            return Err(KeyError::InsecureAcl { path: path.to_owned(), who });
        }
    }
    // `read_openssh` wipes the text it read once parsed.
    let key = PrivateKey::read_openssh(&mut file)
        .map_err(|e| KeyError::InvalidPrivateKey { path: path.to_owned(), reason: e.to_string() })?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted { path: path.to_owned() });
    }
    if let KeypairData::Rsa(_) | KeypairData::Ed25519(_) = key.key_data() {
        Ok(key)
    } else {
        let what = format!("algorithm {} in {}", key.algorithm(), path.display());
        Err(KeyError::Unsupported { what })
    }
}

/// The key's SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:` + unpadded base64.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`, surrounding blanks allowed).
pub fn parse_public_key(line: &str) -> Result<PublicKey, KeyError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| KeyError::InvalidPublicKey { reason: e.to_string() })
}

/// The key as one OpenSSH line (`<alg> <base64>[ <comment>]`), the format
/// [`parse_public_key`] reads and `register` sends.
pub fn public_key_openssh(key: &PublicKey) -> Result<String, KeyError> {
    Ok(key.to_openssh()?)
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> KeyError {
    KeyError::Io { action, path: path.to_owned(), source }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Creates the new file `path` readable and writable by its owner only (mode 0600 on Unix; on Windows an ACL
/// granting only this account, SYSTEM and Administrators), writes `data` and syncs it: for files that hold a
/// secret, such as a config with a password.
pub fn write_owner_only(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    write_new(path, data, 0o600, false)
}

/// Creates `path` exclusively with `mode` (Unix; on Windows a mode without group/other bits gets the owner-only
/// ACL), writes `data` and syncs it. With `replace_tmp`, a stale file of the same (temporary) name is removed
/// first.
fn write_new(path: &Path, data: &[u8], mode: u32, replace_tmp: bool) -> Result<(), KeyError> {
    if replace_tmp {
        let _ = fs::remove_file(path);
    }
    #[cfg(windows)]
    if mode & 0o077 == 0 {
        let mut file = crate::acl::create_owner_only(path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyError::AlreadyExists { path: path.to_owned() },
            _ => io_err("create", path, e),
        })?;
        return file.write_all(data).and_then(|()| file.sync_all()).map_err(|e| io_err("write", path, e));
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => KeyError::AlreadyExists { path: path.to_owned() },
        _ => io_err("create", path, e),
    })?;
    // The umask may have narrowed the mode; never widened it, so only enforce it exactly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io_err("set permissions on", path, e))?;
    }
    file.write_all(data).and_then(|()| file.sync_all()).map_err(|e| io_err("write", path, e))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn algorithm_names_parse() {
        for (s, a) in [
            ("rsa2048", KeyAlgorithm::Rsa2048),
            ("RSA3072", KeyAlgorithm::Rsa3072),
            ("rsa4096", KeyAlgorithm::Rsa4096),
            ("ed25519", KeyAlgorithm::Ed25519),
        ] {
            assert_eq!(s.parse::<KeyAlgorithm>().unwrap(), a);
            assert_eq!(a.to_string().parse::<KeyAlgorithm>().unwrap(), a);
        }
        let err = "dsa".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("use rsa2048"), "{err}");
    }

    #[test]
    fn generates_requested_types() {
        let rsa = generate(KeyAlgorithm::Rsa2048).unwrap();
        match rsa.key_data() {
            KeypairData::Rsa(k) => assert_eq!(k.key_size(), 2048),
            other => panic!("expected rsa, got {:?}", other.algorithm()),
        }
        check_public_key(rsa.public_key()).unwrap();
        let ed = generate(KeyAlgorithm::Ed25519).unwrap();
        assert_eq!(ed.algorithm(), ssh_key::Algorithm::Ed25519);
        check_public_key(ed.public_key()).unwrap();
        let small = PrivateKey::from(RsaKeypair::random(&mut russh::keys::key::safe_rng(), 1024).unwrap());
        assert!(check_public_key(small.public_key()).is_err());
    }

    #[test]
    fn private_key_round_trip_with_0600_and_no_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ferry");
        let key = generate(KeyAlgorithm::Ed25519).unwrap();
        write_private_key(&path, &key, false).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_private_key(&path).unwrap().public_key().key_data(), key.public_key().key_data());

        let other = generate(KeyAlgorithm::Ed25519).unwrap();
        let err = write_private_key(&path, &other, false).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
        assert_eq!(load_private_key(&path).unwrap().public_key().key_data(), key.public_key().key_data());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_key(&path, &other, true).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_private_key(&path).unwrap().public_key().key_data(), other.public_key().key_data());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn load_refuses_group_or_world_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ferry");
        write_private_key(&path, &generate(KeyAlgorithm::Ed25519).unwrap(), false).unwrap();
        for bad in [0o640, 0o604, 0o620, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let err = load_private_key(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("chmod 600 {}", path.display())), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        load_private_key(&path).unwrap();
    }

    #[test]
    fn load_errors_are_clear_and_leak_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = load_private_key(&missing).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }));
        assert!(err.to_string().contains("does not exist"));

        let junk = dir.path().join("junk");
        let secret =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n";
        write_new(&junk, secret.as_bytes(), 0o600, false).unwrap();
        let err = load_private_key(&junk).unwrap_err().to_string();
        assert!(err.contains("not a valid OpenSSH private key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "error leaks file content: {err}");
    }

    #[test]
    fn encrypted_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc");
        let key = generate(KeyAlgorithm::Ed25519).unwrap();
        let enc = key.encrypt(&mut russh::keys::key::safe_rng(), "pw").unwrap();
        write_private_key(&path, &enc, false).unwrap();
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, KeyError::Encrypted { .. }), "{err}");
    }

    #[test]
    fn public_key_line_round_trip_and_fingerprint() {
        let key = generate(KeyAlgorithm::Ed25519).unwrap();
        let line = public_key_openssh(key.public_key()).unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"));
        let back = parse_public_key(&format!("  {line}\n")).unwrap();
        assert_eq!(back.key_data(), key.public_key().key_data());
        let fp = fingerprint(&back);
        assert!(fp.starts_with("SHA256:") && fp.len() == 50 && !fp.ends_with('='), "{fp}");
        assert!(parse_public_key("ssh-ed25519 AAAAnotbase64!").is_err());
        assert!(parse_public_key("").is_err());
    }

    #[test]
    fn openssh_tools_accept_our_files() {
        let keygen = Path::new("/usr/bin/ssh-keygen");
        if !keygen.exists() {
            println!("skipped: ssh-keygen is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for alg in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Ed25519] {
            let key = generate(alg).unwrap();
            let (prv, publ) = (dir.path().join(format!("{alg}")), dir.path().join(format!("{alg}.pub")));
            write_private_key(&prv, &key, false).unwrap();
            write_public_key(&publ, key.public_key(), "ferry@test").unwrap();
            assert_eq!(mode(&publ), 0o644);
            let out = Command::new(keygen).arg("-lf").arg(&publ).output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains(&format!(" {} ferry@test", fingerprint(key.public_key()))), "{text}");
            // ssh-keygen can derive the public key from our private key file.
            let out = Command::new(keygen).arg("-yf").arg(&prv).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let derived = parse_public_key(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
            assert_eq!(derived.key_data(), key.public_key().key_data());
        }
    }
}

/// The Windows counterpart of the mode tests, run under Wine in CI (`.ci/run`): the key's ACL.
#[cfg(test)]
#[cfg(windows)]
mod windows_tests {
    use super::*;

    #[test]
    fn a_new_key_is_readable_by_its_owner_only_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry_key");
        write_private_key(&path, &generate(KeyAlgorithm::Ed25519).unwrap(), false).unwrap();
        assert_eq!(crate::acl::foreign_readers(&path).unwrap(), Vec::<String>::new());
        load_private_key(&path).unwrap();
    }

    #[test]
    fn a_key_everyone_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry_key");
        let me = crate::acl::current_user_sid().unwrap();
        let pem = generate(KeyAlgorithm::Ed25519).unwrap().to_openssh(LineEnding::LF).unwrap();
        let mut f = crate::acl::create_with_dacl(&path, &[&me, "WD"]).unwrap();
        f.write_all(pem.as_bytes()).unwrap();
        drop(f);
        let e = load_private_key(&path).unwrap_err();
        assert!(matches!(e, KeyError::InsecureAcl { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("Everyone") && msg.contains("icacls"), "{msg}");
    }
}
