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

/// A service URL fit to print or log: the password of `scheme://user:password@host/…`, if any,
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
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
    }
}
