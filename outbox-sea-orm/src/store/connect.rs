//! Checking a database URL before connecting.

use crate::Error;

/// Checks that the URL's scheme names a database this build supports.
pub(super) fn check_scheme(url: &str) -> Result<(), Error> {
    let scheme = match url::Url::parse(url) {
        Ok(parsed) => parsed.scheme().to_owned(),
        Err(_) => {
            return Err(Error::UnsupportedScheme {
                scheme: url
                    .split_once(':')
                    .map_or("(none)", |(scheme, _)| scheme)
                    .to_owned(),
            });
        }
    };
    let (name, feature, enabled) = match scheme.as_str() {
        "postgres" | "postgresql" => ("postgres://", "postgres", cfg!(feature = "postgres")),
        "mysql" => ("mysql://", "mysql", cfg!(feature = "mysql")),
        "sqlite" => ("sqlite://", "sqlite", cfg!(feature = "sqlite")),
        _ => return Err(Error::UnsupportedScheme { scheme }),
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
/// `postgres://app:***@db/orders`. A URL that does not parse is shown as
/// its scheme alone.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Fails only for URLs that cannot have a password.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:(a URL that does not parse)"),
            None => "(a URL that does not parse)".to_owned(),
        },
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
        assert_eq!(
            redact("sqlite:///var/lib/app/outbox.db?mode=rwc"),
            "sqlite:///var/lib/app/outbox.db"
        );
        assert_eq!(
            redact("postgres://app:p%40ss@db/orders"),
            "postgres://app:***@db/orders"
        );
        assert!(!redact("postgres://app:s3cret@[::1/x").contains("s3cret"));
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
