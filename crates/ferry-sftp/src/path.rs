//! Mapping of client-supplied SFTP paths onto a principal's root directory.
//!
//! This is the confinement boundary of the SFTP server: every path a client sends goes through
//! [`confine`] before any file-system call. [`normalize`] is the pure, I/O-free half (it turns a
//! wire path into the virtual absolute path the client sees, `/` being the root); [`confine`]
//! adds the file-system half (symbolic links must not lead out of the root).
//!
//! **Invariant**: a path returned by [`confine`] lies under the canonicalised root, its parent
//! directory is fully resolved (no symbolic link left in it), and its last component is kept
//! literally so that `remove`/`rename`/`lstat` act on a link itself rather than on its target.
//! Callers still open files with `O_NOFOLLOW`, so a final-component link is never followed.
//! Residual risk, accepted: a *host-side* process that swaps a directory for a symbolic link
//! between the check and the use (tenants cannot create links: the server does not implement
//! `symlink`).

use std::io;
use std::path::{Path, PathBuf};

/// Longest SFTP path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest name of one path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Why a client path was refused. The messages go back to the SFTP client: they never contain
/// a host path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains a NUL byte; send a plain path without control characters")]
    Nul,
    #[error("the path contains a backslash; use '/' to separate directories")]
    Backslash,
    #[error("the path is longer than {MAX_PATH_LEN} bytes; use a shorter path")]
    TooLong,
    #[error("a name in the path is longer than {MAX_NAME_LEN} bytes; use shorter names")]
    NameTooLong,
    #[error("the path contains a control character; send a plain path without control characters")]
    Control,
    #[error(
        "the path contains the character U+{0:04X}, which looks like a path separator or a dot, or reorders or \
         hides text; use plain names"
    )]
    Deceptive(u32),
    #[error(
        "the path contains the character U+{0:04X}, which is not allowed in names here (allowed: letters, marks and \
         digits of any script, space and ASCII punctuation other than '\\'); use plain names"
    )]
    NotAllowed(u32),
    #[error(
        "the path is not valid UTF-8 (or contains U+FFFD, which is what invalid bytes become); send names in UTF-8"
    )]
    InvalidUtf8,
    #[error("the path is not in Unicode normalisation form C (NFC); send the NFC spelling of every name")]
    NotNfc,
    #[error("the path climbs above your root with '..'; use a path inside your root")]
    AboveRoot,
    #[error("the path leads outside your root through a symbolic link; use a path inside your root")]
    OutsideRoot,
    #[error("the root directory of this account is unavailable ({0}); ask the operator to check it")]
    RootUnavailable(io::ErrorKind),
    #[error("the path could not be resolved ({0}); try again, or ask the operator if it persists")]
    Resolve(io::ErrorKind),
}

/// Characters refused in names although the file system would take them: look-alikes of `/`, `\` and `.`
/// (`．．／` is not `../` to the kernel, but it is to a person reading a listing or a log), and characters
/// that reorder or hide text (a right-to-left override makes `exe.txt` read as `txt.exe`).
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        // slashes and backslashes: fraction slash, division slash, set minus, big solidus, fullwidth forms,
        // small reverse solidus
        '\u{2044}' | '\u{2215}' | '\u{2216}' | '\u{29F8}' | '\u{29F9}' | '\u{FF0F}' | '\u{FF3C}' | '\u{FE68}'
        // dots: one dot leader, two dot leader, small full stop, fullwidth full stop, halfwidth ideographic stop
        | '\u{2024}' | '\u{2025}' | '\u{FE52}' | '\u{FF0E}' | '\u{FF61}'
        // bidirectional controls and marks
        | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        // zero-width and invisible characters
        | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Whether `c` may appear in a name: an allowlist of character classes rather than a list of bad
/// characters. ASCII: letters, digits, space and punctuation (`/` separates names; `\` and control characters
/// are refused before this). Beyond ASCII: letters (`L*`), combining marks (`Mn`, `Mc`) and decimal digits
/// (`Nd`) of any script — no punctuation, symbols, separators, format or private-use characters (so no
/// look-alike of `/` or `.`, nothing invisible, nothing that reorders text) — minus the default-ignorable and
/// filler characters and the overlay marks that those classes contain (`U+034F`, Hangul fillers, Mongolian
/// and Khmer invisible marks, variation selectors, combining slashes and vertical lines).
pub fn is_allowed(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    if c.is_ascii() {
        return c.is_ascii_graphic() || c == ' ';
    }
    if matches!(
        c,
        // combining grapheme joiner; overlay marks (tilde, strokes, slashes: U+0338 draws a `/`)
        '\u{034F}' | '\u{0334}'..='\u{0338}'
        // Hangul fillers (drawn as nothing)
        | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}'
        // Khmer inherent vowels, Mongolian free variation selectors and vowel separator
        | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        // combining vertical lines and slashes overlays, enclosing marks drawn over a name
        | '\u{20D2}' | '\u{20D3}' | '\u{20E5}' | '\u{20EB}'
        // variation selectors
        | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}'
    ) {
        return false;
    }
    matches!(
        c.general_category(),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
            | G::NonspacingMark
            | G::SpacingMark
            | G::DecimalNumber
    )
}

/// Splits an SFTP path into its normalised components, without touching the file system.
///
/// Empty components and `.` are dropped, `..` removes the previous component, and absolute and
/// relative paths are the same thing (the working directory is always the root). NUL, `\`, other
/// control characters, [deceptive](is_deceptive) characters and every character outside the
/// [allowlist](is_allowed) are refused, as are `U+FFFD` (what the SFTP decoder makes of invalid UTF-8: two
/// different byte strings must not become one name), paths not in NFC (one spelling per name), names longer
/// than [`MAX_NAME_LEN`] and paths longer than [`MAX_PATH_LEN`].
pub fn components(sftp_path: &str) -> Result<Vec<&str>, PathError> {
    if sftp_path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    for c in sftp_path.chars() {
        match c {
            '\0' => return Err(PathError::Nul),
            '\\' => return Err(PathError::Backslash),
            c if c.is_control() => return Err(PathError::Control),
            '\u{FFFD}' => return Err(PathError::InvalidUtf8),
            c if is_deceptive(c) => return Err(PathError::Deceptive(u32::from(c))),
            c if !is_allowed(c) => return Err(PathError::NotAllowed(u32::from(c))),
            _ => {}
        }
    }
    if !sftp_path.is_ascii() && !unicode_normalization::is_nfc(sftp_path) {
        return Err(PathError::NotNfc);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in sftp_path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            name if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong),
            name => parts.push(name),
        }
    }
    Ok(parts)
}

/// The virtual absolute path the client sees for `sftp_path` (`/` is the root). Pure: no I/O.
///
/// ```
/// assert_eq!(ferry_sftp::path::normalize("a/./b//c/..").unwrap(), "/a/b");
/// assert_eq!(ferry_sftp::path::normalize(".").unwrap(), "/");
/// assert!(ferry_sftp::path::normalize("a/../..").is_err());
/// ```
pub fn normalize(sftp_path: &str) -> Result<String, PathError> {
    let parts = components(sftp_path)?;
    if parts.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(sftp_path.len() + 1);
    for part in parts {
        out.push('/');
        out.push_str(part);
    }
    Ok(out)
}

/// Maps `sftp_path` onto `root` and checks that it stays there.
///
/// `..` may not climb above the root; `/x` means `root/x`; NUL and `\` are refused. The deepest
/// existing ancestor of the parent directory is canonicalised and must stay under the
/// canonicalised root; a last component that is a symbolic link must point inside the root as
/// well (it is still returned unresolved). The returned path starts with the canonical root.
pub fn confine(root: &Path, sftp_path: &str) -> Result<PathBuf, PathError> {
    let parts = components(sftp_path)?;
    let canon_root = root.canonicalize().map_err(|e| PathError::RootUnavailable(e.kind()))?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(canon_root);
    };

    // Find the deepest existing ancestor of the parent directory.
    let mut probe = canon_root.clone();
    probe.extend(parents.iter());
    let mut missing: Vec<&str> = Vec::new();
    let mut pending = parents.iter().rev();
    loop {
        match std::fs::symlink_metadata(&probe) {
            Ok(_) => break,
            Err(e) if is_absent(&e) => {
                // `probe` is strictly below the root here: the root itself exists.
                let Some(name) = pending.next() else {
                    return Err(PathError::RootUnavailable(e.kind()));
                };
                missing.push(name);
                probe.pop();
            }
            Err(e) => return Err(PathError::Resolve(e.kind())),
        }
    }
    let mut resolved = match probe.canonicalize() {
        Ok(p) => p,
        // a dangling symbolic link: whatever it names is not known to be inside the root
        Err(e) if is_absent(&e) => return Err(PathError::OutsideRoot),
        Err(e) => return Err(PathError::Resolve(e.kind())),
    };
    if !resolved.starts_with(&canon_root) {
        return Err(PathError::OutsideRoot);
    }
    resolved.extend(missing.iter().rev());
    resolved.push(last);

    if let Ok(meta) = std::fs::symlink_metadata(&resolved)
        && meta.file_type().is_symlink()
    {
        match resolved.canonicalize() {
            Ok(target) if target.starts_with(&canon_root) => {}
            Ok(_) => return Err(PathError::OutsideRoot),
            Err(e) if is_absent(&e) => return Err(PathError::OutsideRoot),
            Err(e) => return Err(PathError::Resolve(e.kind())),
        }
    }
    Ok(resolved)
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let canon = dir.path().canonicalize().expect("canonicalize");
        (dir, canon)
    }

    #[test]
    fn dot_dot_above_root_is_refused() {
        let (dir, _) = root();
        for p in ["..", "../..", "/..", "a/../..", "a/../../b", "./../x", "a/b/../../../etc"] {
            assert_eq!(confine(dir.path(), p), Err(PathError::AboveRoot), "{p}");
        }
    }

    #[test]
    fn absolute_paths_map_onto_the_root() {
        let (dir, canon) = root();
        assert_eq!(confine(dir.path(), "/etc/passwd").unwrap(), canon.join("etc/passwd"));
        assert_eq!(confine(dir.path(), "/").unwrap(), canon);
        assert_eq!(confine(dir.path(), "").unwrap(), canon);
        assert_eq!(confine(dir.path(), ".").unwrap(), canon);
        assert_eq!(confine(dir.path(), "//a///b/./").unwrap(), canon.join("a/b"));
        assert_eq!(confine(dir.path(), "a/../b").unwrap(), canon.join("b"));
    }

    #[test]
    fn nul_backslash_and_long_paths_are_refused() {
        let (dir, _) = root();
        assert_eq!(confine(dir.path(), "a\0b"), Err(PathError::Nul));
        assert_eq!(confine(dir.path(), "..\\..\\etc"), Err(PathError::Backslash));
        assert_eq!(confine(dir.path(), "a\\b"), Err(PathError::Backslash));
        let long = "a/".repeat(MAX_PATH_LEN);
        assert_eq!(confine(dir.path(), &long), Err(PathError::TooLong));
    }

    #[test]
    fn control_look_alike_and_overlong_names_are_refused() {
        let (dir, canon) = root();
        for (p, want) in [
            ("\u{FF0E}\u{FF0E}/etc", PathError::Deceptive(0xFF0E)),
            ("..\u{FF0F}etc", PathError::Deceptive(0xFF0F)),
            ("a\u{2215}..\u{2215}b", PathError::Deceptive(0x2215)),
            ("report\u{202E}txt.exe", PathError::Deceptive(0x202E)),
            ("a\u{200B}b", PathError::Deceptive(0x200B)),
            ("a\nb", PathError::Control),
            ("a\u{1b}[31mb", PathError::Control),
            ("a\u{85}b", PathError::Control),
        ] {
            assert_eq!(confine(dir.path(), p), Err(want), "{p:?}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(confine(dir.path(), &long), Err(PathError::NameTooLong));
        assert_eq!(confine(dir.path(), &format!("a/{long}/b")), Err(PathError::NameTooLong));
        let ok = "x".repeat(MAX_NAME_LEN);
        assert_eq!(confine(dir.path(), &ok).unwrap(), canon.join(&ok));
        // letters of any script stay literal; one spelling per name: NFC, and NFD is refused
        assert_eq!(confine(dir.path(), "caf\u{e9}").unwrap(), canon.join("caf\u{e9}"));
        assert_eq!(confine(dir.path(), "cafe\u{301}"), Err(PathError::NotNfc));
        assert_eq!(confine(dir.path(), "\u{6570}\u{636e}").unwrap(), canon.join("\u{6570}\u{636e}"));
    }

    #[test]
    fn names_take_only_allowed_character_classes() {
        // issue 15: invisible, filler, format and look-alike characters the old denylist let through
        for cp in [
            0x2061u32, 0x2064, 0x206A, 0x206F, 0x00AD, 0x180E, 0x3164, 0x115F, 0xFFF9, 0xE0041, 0x034F, 0x2028, 0x2029,
            0x0338, 0x2571, 0x29F5, 0x2F03, 0x3002, 0x0589, 0x06D4, 0x00B7, 0x2027, 0xFE0F, 0xE000, 0x3000,
        ] {
            let c = char::from_u32(cp).expect("a char");
            assert!(!is_allowed(c), "U+{cp:04X}");
            assert_eq!(components(&format!("a{c}b")), Err(PathError::NotAllowed(cp)), "U+{cp:04X}");
        }
        assert_eq!(components("a\u{FFFD}b"), Err(PathError::InvalidUtf8));
        for ok in [
            "sales.csv.bz2",
            ".sales.csv.bz2.part",
            "a b-c_d(1)~!@#$%^&+=,;'[]{}",
            "\u{e9}t\u{e9}",
            "\u{434}\u{430}",
            "\u{0661}\u{0662}",
        ] {
            assert!(components(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn normalize_is_pure_and_virtual() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("x/y/../z").unwrap(), "/x/z");
        assert_eq!(normalize("/x/./y/").unwrap(), "/x/y");
        assert_eq!(normalize(".."), Err(PathError::AboveRoot));
    }

    #[test]
    fn symlink_inside_root_pointing_outside_is_refused() {
        let (dir, _) = root();
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        symlink(outside.path(), dir.path().join("evil")).unwrap();
        symlink(outside.path().join("secret"), dir.path().join("evil_file")).unwrap();
        symlink("/nonexistent/dangling", dir.path().join("dangling")).unwrap();
        for p in ["evil/secret", "/evil/secret", "evil", "evil/new/deeper", "evil_file"] {
            assert_eq!(confine(dir.path(), p), Err(PathError::OutsideRoot), "{p}");
        }
        assert_eq!(confine(dir.path(), "dangling"), Err(PathError::OutsideRoot));
        assert_eq!(confine(dir.path(), "dangling/x"), Err(PathError::OutsideRoot));
    }

    #[test]
    fn symlink_inside_root_pointing_inside_is_kept_literal() {
        let (dir, canon) = root();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        symlink(dir.path().join("real"), dir.path().join("alias")).unwrap();
        // a link as the last component is returned as is (O_NOFOLLOW then refuses to open it)
        assert_eq!(confine(dir.path(), "alias").unwrap(), canon.join("alias"));
        // a link in the parent is resolved
        assert_eq!(confine(dir.path(), "alias/f").unwrap(), canon.join("real/f"));
    }

    #[test]
    fn missing_intermediate_directories_are_allowed() {
        let (dir, canon) = root();
        assert_eq!(confine(dir.path(), "new/sub/file").unwrap(), canon.join("new/sub/file"));
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        // a file used as a directory is not an escape; the operation itself will fail
        assert_eq!(confine(dir.path(), "plain/x").unwrap(), canon.join("plain/x"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that matter (dots, separators, look-alikes, long names), and any string.
        fn sftp_path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "..",
                ".",
                "",
                "a",
                "b c",
                "dir",
                "link",
                "\u{FF0E}\u{FF0E}",
                "\u{2215}",
                "caf\u{e9}",
                "\\",
                "\0",
                "\n",
                "\u{202E}",
                "etc",
                "passwd",
            ]);
            let long = (1usize..300).prop_map(|n| "n".repeat(n));
            let part = prop_oneof![4 => piece.prop_map(String::from), 1 => long, 1 => "[^/]{0,12}"];
            prop_oneof![
                3 => (any::<bool>(), prop::collection::vec(part, 0..12))
                    .prop_map(|(abs, v)| format!("{}{}", if abs { "/" } else { "" }, v.join("/"))),
                1 => any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn normalize_is_absolute_clean_and_idempotent(p in sftp_path()) {
                if let Ok(n) = normalize(&p) {
                    prop_assert!(n.starts_with('/'));
                    prop_assert!(n == "/" || !n[1..].split('/').any(|c| c.is_empty() || c == "." || c == ".."), "{n:?}");
                    prop_assert_eq!(normalize(&n), Ok(n.clone()));
                }
            }

            #[test]
            fn confine_never_leaves_the_root(p in sftp_path()) {
                let (dir, canon) = root();
                let outside = tempfile::tempdir().expect("tempdir");
                std::fs::create_dir(dir.path().join("dir")).expect("dir");
                symlink(outside.path(), dir.path().join("link")).expect("symlink");
                match confine(dir.path(), &p) {
                    Ok(resolved) => {
                        prop_assert!(resolved.starts_with(&canon), "{p:?} -> {resolved:?}");
                        // the same answer for the path as the client will see it afterwards
                        let n = normalize(&p).expect("confine accepted it, so normalize does");
                        prop_assert_eq!(confine(dir.path(), &n), Ok(resolved));
                    }
                    Err(_) => prop_assert!(true),
                }
            }
        }
    }
}
