//! Connection strings: how the ERP database is named in `[erp] url` (a path, a `scheme://` URL or an ODBC
//! connection string), how a password is added to one, and how one is shown in messages and logs without its
//! password ([`redact_url`], [`scrub`]).

/// A connection string fit for messages and logs: the password of `scheme://user:password@host/...` and any
/// `password=`/`pwd=` parameter (ODBC style, query string) replaced by `***`. Plain paths come back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(scheme_end) = s.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = s[rest_start..].find(['/', '?', '#']).map_or(s.len(), |i| rest_start + i);
        if let Some(at) = s[rest_start..authority_end].rfind('@') {
            let userinfo = &s[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                s.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    redact_params(&s)
}

fn redact_params(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let hit = ["password=", "pwd="]
            .iter()
            .filter_map(|k| {
                lower
                    .match_indices(k)
                    .find(|(i, _)| *i == 0 || matches!(lower.as_bytes()[i - 1], b';' | b'&' | b'?' | b' '))
                    .map(|(i, _)| (i, k.len()))
            })
            .min();
        let Some((i, klen)) = hit else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i + klen]);
        out.push_str("***");
        let value = &rest[i + klen..];
        let end =
            if value.starts_with('{') { braced_end(value) } else { value.find([';', '&']).unwrap_or(value.len()) };
        rest = &value[end..];
    }
}

/// The length of an ODBC `{...}` value at the start of `value` (`}}` is an escaped `}`); all of it if unclosed.
fn braced_end(value: &str) -> usize {
    let b = value.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'}' {
            if b.get(i + 1) == Some(&b'}') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// `connection_string` with `PWD={password}` appended (braces quote `;` and `=`; a `}` is doubled), unless the
/// password is empty or absent.
pub fn with_password(connection_string: &str, password: Option<&str>) -> String {
    let mut s = connection_string.trim().to_string();
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        if !s.is_empty() && !s.ends_with(';') {
            s.push(';');
        }
        s.push_str("PWD={");
        s.push_str(&p.replace('}', "}}"));
        s.push_str("};");
    }
    s
}

/// Whether `url` reads as an ODBC connection string (`Driver=...`, `DSN=...` or `FileDSN=...` among its
/// `;`-separated attributes) rather than a URL or a path.
pub fn is_odbc_connection_string(url: &str) -> bool {
    !url.contains("://")
        && url.split(';').any(|attr| {
            attr.split_once('=')
                .is_some_and(|(k, _)| matches!(k.trim().to_ascii_lowercase().as_str(), "driver" | "dsn" | "filedsn"))
        })
}

/// The password written in a URL, so that driver messages quoting the URL can be scrubbed.
pub fn password_in_url(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    u.password().map(|p| {
        url::form_urlencoded::parse(format!("x={p}").as_bytes()).next().map_or_else(|| p.to_string(), |(_, v)| v.into())
    })
}

/// `message` with every occurrence of `secret` replaced by `***`: database drivers may quote a connection string.
pub fn scrub(message: impl std::fmt::Display, secret: Option<&str>) -> String {
    let message = message.to_string();
    match secret {
        Some(s) if !s.is_empty() => message.replace(s, "***"),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://erp:s3cr@t@db:5432/erp"), "postgres://erp:***@db:5432/erp");
        assert_eq!(redact_url("mysql://erp@db/erp"), "mysql://erp@db/erp");
        assert_eq!(redact_url("/var/lib/erp.db"), "/var/lib/erp.db");
        assert_eq!(redact_url("DSN=erp;UID=ferry;PWD=hunter2;X=1"), "DSN=erp;UID=ferry;PWD=***;X=1");
        assert_eq!(redact_url("postgres://db/erp?user=a&password=b"), "postgres://db/erp?user=a&password=***");
        assert_eq!(redact_url("DSN=erp;PWD={a;b}}c};UID=x"), "DSN=erp;PWD=***;UID=x");
        assert_eq!(redact_url("DSN=erp;PWD={a;b"), "DSN=erp;PWD=***");
    }

    #[test]
    fn password_is_appended_quoted_and_redacted() {
        let s = with_password("Driver=/x.so;Server=db", Some("p;a}ss"));
        assert_eq!(s, "Driver=/x.so;Server=db;PWD={p;a}}ss};");
        assert!(!redact_url(&s).contains("a}}ss"), "{}", redact_url(&s));
        assert_eq!(with_password("DSN=erp;", None), "DSN=erp;");
        assert_eq!(with_password("DSN=erp", Some("")), "DSN=erp");
    }

    #[test]
    fn recognises_connection_strings() {
        assert!(is_odbc_connection_string("Driver=/usr/lib/odbc/psqlodbcw.so;Server=db"));
        assert!(is_odbc_connection_string("DSN=erp;UID=ferry"));
        assert!(is_odbc_connection_string(" dsn = erp"));
        assert!(!is_odbc_connection_string("/var/lib/erp.db"));
        assert!(!is_odbc_connection_string("postgres://u@h/db?dsn=x"));
        assert!(!is_odbc_connection_string("sqlite:erp.db?mode=ro"));
    }

    #[test]
    fn password_in_url_is_found_for_scrubbing() {
        assert_eq!(password_in_url("postgres://u:s%40cret@h/db").as_deref(), Some("s@cret"));
        assert_eq!(password_in_url("postgres://u@h/db"), None);
    }
}
