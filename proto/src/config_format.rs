//! Config-file formats the roles share.

/// An optional listener in a config file: an address, or `"off"`. (A missing field takes its
/// default, so `None` needs a value of its own to be written down.)
pub mod optional_listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub const OFF: &str = "off";

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == OFF {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{text:?}: {e} (expected host:port, or \"{OFF}\")"))
        })
    }
}

/// A service URL fit to print or log: the password of `scheme://user:password@host/…`, and the
/// value of a `password` query parameter (`postgres://host/db?password=…`), if any, replaced by
/// `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@').and_then(|at| Some((at, rest[..at].split_once(':')?))) {
        Some((at, (user, _password))) => format!("{user}:***{}", &rest[at..]),
        None => rest.to_string(),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest.as_str(), None),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => rest.to_string(),
    };
    match fragment {
        Some(f) => format!("{scheme}://{rest}#{f}"),
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://gochat:s3cr3t@db:5432/gochat"),
            "postgres://gochat:***@db:5432/gochat"
        );
        assert_eq!(redact_url("redis://:p@ss@10.0.0.2:6379/0"), "redis://:***@10.0.0.2:6379/0");
        assert_eq!(redact_url("postgres://gochat@db/gochat"), "postgres://gochat@db/gochat");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("sqlite://gochat.sqlite3"), "sqlite://gochat.sqlite3");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("redis://h/x?a=b@c:d"), "redis://h/x?a=b@c:d");
        assert_eq!(
            redact_url("postgres://db/gochat?sslmode=require&password=s3cr3t&user=gochat"),
            "postgres://db/gochat?sslmode=require&password=***&user=gochat"
        );
        assert_eq!(redact_url("postgres://u:p@db/x?Password=q#f"), "postgres://u:***@db/x?Password=***#f");
        assert_eq!(
            redact_url("postgres://db/x?passwords=1&password"),
            "postgres://db/x?passwords=1&password"
        );
    }
}
