//! The ERP database the Connector reads from and writes back to: its `[erp]` settings as typed values
//! ([`ErpConfig`]: the [`ErpKind`], the resolved URL, where the [`Password`] comes from, the [`TextEncoding`]),
//! the connection-string helpers ([`redact_url`], [`with_password`], [`is_odbc_connection_string`], ...) and the
//! two boundaries to the database, each one trait with one backend per kind:
//!
//! - [`source`]: the [`Source`](source::Source) trait — run a query, stream its rows — for SQLite, PostgreSQL,
//!   MySQL/MariaDB, ODBC and a folder of CSV files;
//! - [`writeback`]: the [`WriteBack`](writeback::WriteBack) trait — write the rows of one downstream CSV file in
//!   one transaction, with the optional ERP-side ledger — for SQLite, PostgreSQL and MySQL/MariaDB (one sqlx
//!   implementation) and ODBC.
//!
//! **Invariant**: this module is a leaf. It imports nothing else from the crate (no `config`, no `delivery`):
//! `config` turns the TOML into an [`ErpConfig`], `delivery` and `extract` use the traits. It knows the names of
//! the `connector.toml` keys only to say in messages which one to fix.
//!
//! Both traits are checked by one conformance suite each, run against every backend: they live in
//! `tests/it/conformance.rs`, a support module of the integration tests (SQLite always; PostgreSQL, MySQL and
//! ODBC when their test servers or drivers are configured). A module of the tests rather than a `conformance`
//! feature of this crate: the suites need the test servers' helpers and `tempfile`, and the library is then built
//! once for the binary and the tests alike.

use std::fmt;
use std::path::{Path, PathBuf};

mod connstr;
pub mod source;
pub mod writeback;

pub use connstr::{is_odbc_connection_string, password_in_url, redact_url, scrub, with_password};

/// `[erp] kind`: which kind of database the ERP keeps its data in. Parsed once, when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErpKind {
    /// `sqlite`: an SQLite database file (read-only for the extract).
    Sqlite,
    /// `postgres` (or `postgresql`).
    Postgres,
    /// `mysql` (or `mariadb`): MySQL and MariaDB.
    MySql,
    /// `odbc`: any database with an ODBC driver; `url` is a connection string.
    Odbc,
    /// `csv`: a folder of CSV files an ERP job exports; `url` is the folder.
    Csv,
}

impl ErpKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [ErpKind; 5] = [ErpKind::Sqlite, ErpKind::Postgres, ErpKind::MySql, ErpKind::Odbc, ErpKind::Csv];

    /// `sqlite`, `postgres` (`postgresql`), `mysql` (`mariadb`), `odbc` or `csv`, as written in `[erp] kind`.
    pub fn parse(name: &str) -> Result<ErpKind, UnknownKind> {
        Ok(match name {
            "sqlite" => ErpKind::Sqlite,
            "postgres" | "postgresql" => ErpKind::Postgres,
            "mysql" | "mariadb" => ErpKind::MySql,
            "odbc" => ErpKind::Odbc,
            "csv" => ErpKind::Csv,
            _ => return Err(UnknownKind(name.to_string())),
        })
    }

    /// The canonical name (what `[erp] kind` says, aliases folded).
    pub fn as_str(self) -> &'static str {
        match self {
            ErpKind::Sqlite => "sqlite",
            ErpKind::Postgres => "postgres",
            ErpKind::MySql => "mysql",
            ErpKind::Odbc => "odbc",
            ErpKind::Csv => "csv",
        }
    }

    /// Whether `url` of this kind names a file or folder (taken relative to the config file's folder) rather than
    /// a `scheme:` URL or an ODBC connection string.
    pub fn url_is_path(self, url: &str) -> bool {
        match self {
            ErpKind::Odbc => false,
            ErpKind::Csv => true,
            ErpKind::Sqlite | ErpKind::Postgres | ErpKind::MySql => !url.contains(':'),
        }
    }
}

impl fmt::Display for ErpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErpKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<ErpKind, UnknownKind> {
        ErpKind::parse(s)
    }
}

/// `[erp] kind` names no kind this build supports; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("erp.kind {0:?} is not supported by this build; use \"sqlite\", \"postgres\", \"mysql\", \"odbc\" or \"csv\"")]
pub struct UnknownKind(pub String);

/// `[erp] encoding` names no encoding the Connector knows; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding {0:?} is not supported; set [erp] encoding to \"utf-8\", \"windows-1252\" or \"latin-1\"")]
pub struct UnknownEncoding(pub String);

/// The `[erp]` section as typed values: what the extract's [`Source`](source::Source) and the SQL
/// [`WriteBack`](writeback::WriteBack) connect to. Built by `config` when the Connector's config is loaded (the
/// mapping file named in `[erp]` is not part of the connection: the config keeps it with its other paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErpConfig {
    pub kind: ErpKind,
    /// Database path or URL (`postgres://user@host:5432/erp`, `mysql://user@host:3306/erp`); for `odbc` a
    /// connection string (`Driver=/path/driver.so;Server=...` or `DSN=erp`); for `csv` the folder. A path is
    /// already resolved against the config file's folder ([`ErpConfig::resolve_url`]).
    pub url: String,
    /// Where the database password comes from, if from anywhere but the URL.
    pub password: Password,
    /// How non-UTF-8 text in the ERP is encoded.
    pub encoding: TextEncoding,
}

impl ErpConfig {
    /// An `[erp]` section with this kind and URL and everything else at its default.
    pub fn new(kind: ErpKind, url: &str) -> ErpConfig {
        ErpConfig { kind, url: url.into(), password: Password::None, encoding: TextEncoding::Utf8 }
    }

    /// `url` with a path taken relative to `base` (the config file's folder) unless it is absolute; a URL or an
    /// ODBC connection string comes back as written.
    pub fn resolve_url(mut self, base: &Path) -> ErpConfig {
        if self.kind.url_is_path(&self.url) {
            let p = Path::new(&self.url);
            if !p.is_absolute() {
                self.url = base.join(p).display().to_string();
            }
        }
        self
    }

    /// The password ([`Password::read`]), or `None`. The error says which setting is wrong and never contains
    /// the password.
    pub fn password(&self) -> Result<Option<String>, PasswordError> {
        self.password.read()
    }
}

/// Where the ERP database's password comes from: at most one of `[erp] password`, `password_env` and
/// `password_file` (the config refuses more than one). Read when a connection is opened, so a changed variable or
/// file takes effect without reloading the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Password {
    /// No password apart from the URL's.
    #[default]
    None,
    /// `password`: written in the config (least safe).
    Inline(Secret),
    /// `password_env`: the name of an environment variable holding it.
    Env(String),
    /// `password_file`: a file holding it (its first line); the path is resolved.
    File(PathBuf),
}

impl Password {
    /// The password, or `None` when none is configured.
    pub fn read(&self) -> Result<Option<String>, PasswordError> {
        match self {
            Password::None => Ok(None),
            Password::Inline(p) => Ok(Some(p.0.clone())),
            Password::Env(var) => match std::env::var(var) {
                Ok(v) => Ok(Some(v)),
                Err(_) => Err(PasswordError::EnvNotSet { var: var.clone() }),
            },
            Password::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text.lines().next().unwrap_or("").to_string())),
                Err(source) => Err(PasswordError::File { path: path.clone(), source }),
            },
        }
    }
}

/// The configured password cannot be read. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "[erp] password_env names the environment variable {var:?}, which is not set (or not UTF-8); set it for \
         the Connector's service"
    )]
    EnvNotSet { var: String },
    #[error("cannot read the password file {} ([erp] password_file): {source}; check the path and its permissions", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A password: read from the config, never shown by `Debug` or in messages.
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the ERP stores text that is not UTF-8 (`[erp] encoding`). PostgreSQL and MySQL/MariaDB convert text
/// columns to UTF-8 themselves; the setting applies to byte values (BLOB, BYTEA, VARBINARY, a latin1 column read
/// as bytes) and to text that is not valid UTF-8 (SQLite, a PostgreSQL `SQL_ASCII` database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8: bytes that are valid UTF-8 are text, other bytes stay bytes (and fail in a text column).
    #[default]
    Utf8,
    /// Windows code page 1252 (what most "Latin-1" Windows software and MySQL's `latin1` really write).
    Windows1252,
    /// ISO-8859-1: every byte is the Unicode code point of the same number.
    Latin1,
}

impl TextEncoding {
    /// `utf-8`, `windows-1252` (`cp1252`) or `latin-1` (`iso-8859-1`), any case.
    pub fn parse(name: &str) -> Result<TextEncoding, UnknownEncoding> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "utf-8" | "utf8" => Ok(TextEncoding::Utf8),
            "windows-1252" | "cp1252" => Ok(TextEncoding::Windows1252),
            "latin-1" | "latin1" | "iso-8859-1" => Ok(TextEncoding::Latin1),
            _ => Err(UnknownEncoding(name.to_string())),
        }
    }

    /// A byte value as the source should report it: UTF-8 text if valid, else decoded from a legacy encoding,
    /// else (UTF-8 configured) the bytes themselves.
    pub fn value_from_bytes(self, bytes: Vec<u8>) -> source::SqlValue {
        match String::from_utf8(bytes) {
            Ok(s) => source::SqlValue::Text(s),
            Err(e) if self == TextEncoding::Utf8 => source::SqlValue::Bytes(e.into_bytes()),
            Err(e) => source::SqlValue::Text(decode_text(e.as_bytes(), self)),
        }
    }
}

/// `bytes` in `encoding` as UTF-8 text. Never fails: invalid UTF-8 becomes U+FFFD; every Windows-1252 and Latin-1
/// byte has a character.
pub fn decode_text(bytes: &[u8], encoding: TextEncoding) -> String {
    match encoding {
        TextEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        TextEncoding::Windows1252 => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
        TextEncoding::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_encodings_become_utf8() {
        let cp1252 = b"Caf\xe9 \x80 \x93quoted\x94 na\xefve";
        assert_eq!(decode_text(cp1252, TextEncoding::Windows1252), "Café € “quoted” naïve");
        assert_eq!(decode_text(b"Caf\xe9 \xff", TextEncoding::Latin1), "Café ÿ");
        assert_eq!(decode_text(b"\x80", TextEncoding::Latin1), "\u{80}");
        assert_eq!(TextEncoding::parse("Windows-1252").unwrap(), TextEncoding::Windows1252);
        assert_eq!(TextEncoding::parse("latin1").unwrap(), TextEncoding::Latin1);
        assert_eq!(TextEncoding::parse("").unwrap(), TextEncoding::Utf8);
        assert!(TextEncoding::parse("ebcdic").unwrap_err().to_string().contains("windows-1252"));
        assert_eq!(scrub("bad url postgres://u:hunter2@h", Some("hunter2")), "bad url postgres://u:***@h");
    }

    #[test]
    fn kinds_parse_once_with_their_aliases() {
        assert_eq!(ErpKind::parse("postgresql"), Ok(ErpKind::Postgres));
        assert_eq!(ErpKind::parse("mariadb"), Ok(ErpKind::MySql));
        for k in ErpKind::ALL {
            assert_eq!(ErpKind::parse(k.as_str()), Ok(k));
        }
        let e = ErpKind::parse("oracle").unwrap_err().to_string();
        assert!(
            e.contains("\"oracle\"") && e.contains("\"sqlite\", \"postgres\", \"mysql\", \"odbc\" or \"csv\""),
            "{e}"
        );
    }

    #[test]
    fn paths_resolve_against_the_config_folder_urls_do_not() {
        let base = Path::new("/opt/ferry");
        let url = |kind, u: &str| ErpConfig::new(kind, u).resolve_url(base).url;
        assert_eq!(url(ErpKind::Sqlite, "erp.db"), "/opt/ferry/erp.db");
        assert_eq!(url(ErpKind::Sqlite, "sqlite:erp.db"), "sqlite:erp.db");
        assert_eq!(url(ErpKind::Csv, "export"), "/opt/ferry/export");
        assert_eq!(url(ErpKind::Odbc, "DSN=erp"), "DSN=erp");
        assert_eq!(url(ErpKind::Postgres, "postgres://h/db"), "postgres://h/db");
        assert_eq!(url(ErpKind::Sqlite, "/var/erp.db"), "/var/erp.db");
    }
}
