//! Checking a database URL before connecting.

use crate::Error;

/// Checks that the URL's scheme names a database this build supports.
pub(super) fn check_scheme(url: &str) -> Result<(), Error> {
    let scheme = url.split(':').next().unwrap_or_default();
    let (name, feature, enabled) = match scheme {
        "postgres" | "postgresql" => ("postgres://", "postgres", cfg!(feature = "postgres")),
        "mysql" => ("mysql://", "mysql", cfg!(feature = "mysql")),
        "sqlite" => ("sqlite://", "sqlite", cfg!(feature = "sqlite")),
        _ if !url.contains(':') => {
            return Err(Error::UnsupportedScheme {
                scheme: "(none)".to_owned(),
            });
        }
        other => {
            return Err(Error::UnsupportedScheme {
                scheme: other.to_owned(),
            });
        }
    };
    if enabled {
        Ok(())
    } else {
        Err(Error::BackendDisabled {
            scheme: name,
            feature,
        })
    }
}

/// A database URL without its password and query, for messages and logs:
/// `postgres://app:s3cret@db/orders?sslmode=require` becomes
/// `postgres://app:***@db/orders`.
pub fn redact(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders?sslmode=require"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn unknown_schemes_are_named() {
        let error = check_scheme("redis://127.0.0.1:6379").unwrap_err();
        assert!(matches!(&error, Error::UnsupportedScheme { scheme } if scheme == "redis"));
        assert!(matches!(
            check_scheme("no scheme at all").unwrap_err(),
            Error::UnsupportedScheme { .. }
        ));
    }
}
