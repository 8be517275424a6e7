//! The producer configuration: the sink's defaults and the checks librdkafka
//! only makes lazily.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::Error;

/// The defaults the sink adds when the user's configuration sets none of a
/// property's names: `(names, value)`, the first name being the one set.
const DEFAULTS: &[(&[&str], &str)] = &[
    // No duplicates and no reordering under librdkafka's own retries.
    (&["enable.idempotence"], "true"),
    // A record counts as delivered once every in-sync replica has it.
    (&["acks", "request.required.acks"], "all"),
    // Built into the bundled librdkafka, cheap on CPU.
    (&["compression.type", "compression.codec"], "lz4"),
    // The sink hands a whole batch (or, when it sends a key's records one
    // at a time, a whole step of them) to the producer at once and then
    // waits for the reports, so there is nothing for lingering to gather:
    // each millisecond of it is added to every batch and every step.
    // Records queued while a request is being built still share it.
    (&["linger.ms", "queue.buffering.max.ms"], "0"),
    // Below the relay's default lease of 30 s, so a publish ends before the
    // lease does and no other relay takes the records over meanwhile.
    (&["message.timeout.ms", "delivery.timeout.ms"], "20000"),
];

/// The names of `enable.idempotence`.
const IDEMPOTENCE: &[&str] = &["enable.idempotence"];

/// The names of `enable.gapless.guarantee`.
const GAPLESS: &[&str] = &["enable.gapless.guarantee"];

/// The names of `retries`.
const RETRIES: &[&str] = &["retries", "message.send.max.retries"];

/// librdkafka's default `retries` with idempotence: retry until
/// `message.timeout.ms`.
const UNLIMITED_RETRIES: &str = "2147483647";

/// The names of `message.timeout.ms`.
const MESSAGE_TIMEOUT: &[&str] = &["message.timeout.ms", "delivery.timeout.ms"];

/// The names of `bootstrap.servers`.
const BOOTSTRAP: &[&str] = &["bootstrap.servers", "metadata.broker.list"];

/// Adds the sink's defaults for the properties `config` leaves unset and
/// returns them as `property=value`.
///
/// With idempotence on, `enable.gapless.guarantee=true` is one of them:
/// librdkafka then stops the producer (a fatal error) rather than write a
/// partition's later records after an earlier one failed for good, which
/// lets the sink hand a key's records over together (see
/// [`keeps_partitions_gapless`]). librdkafka refuses the property without
/// idempotence, so it is not added then.
pub(crate) fn apply_defaults(config: &mut ClientConfig) -> Vec<String> {
    let mut applied = Vec::new();
    for (names, value) in DEFAULTS {
        if names.iter().all(|name| config.get(name).is_none()) {
            config.set(names[0], *value);
            applied.push(format!("{}={value}", names[0]));
        }
    }
    if flag(config, IDEMPOTENCE) == Some(true) && GAPLESS.iter().all(|n| config.get(n).is_none()) {
        config.set(GAPLESS[0], "true");
        applied.push(format!("{}=true", GAPLESS[0]));
    }
    applied
}

/// Whether a producer made with `config` writes each partition's records
/// in the order they were produced, and never a record after an earlier
/// one of its partition failed, except by `message.timeout.ms`:
/// `enable.idempotence=true`, `enable.gapless.guarantee=true`, and
/// `retries` left at librdkafka's default (unlimited until the timeout; a
/// record that runs out of retries leaves a gap the guarantee does not
/// cover).
///
/// librdkafka only validates the configuration when the producer is made,
/// so a value it would refuse counts as not keeping the guarantee here.
pub(crate) fn keeps_partitions_gapless(config: &ClientConfig) -> bool {
    let retries_unlimited = RETRIES
        .iter()
        .filter_map(|name| config.get(name))
        .all(|value| value.trim() == UNLIMITED_RETRIES);
    flag(config, IDEMPOTENCE) == Some(true)
        && flag(config, GAPLESS) == Some(true)
        && retries_unlimited
}

/// A boolean property as librdkafka reads it (`true`, `t`, `1`, `false`,
/// `f`, `0`, any case); `None` when unset or unreadable.
fn flag(config: &ClientConfig, names: &[&str]) -> Option<bool> {
    let value = names.iter().find_map(|name| config.get(name))?.trim();
    if ["true", "t", "1"]
        .iter()
        .any(|t| value.eq_ignore_ascii_case(t))
    {
        Some(true)
    } else if ["false", "f", "0"]
        .iter()
        .any(|f| value.eq_ignore_ascii_case(f))
    {
        Some(false)
    } else {
        None
    }
}

/// The value of the first of `names` that is set, failing when two of them
/// are set to different values (librdkafka would pick one at random).
fn one_of<'c>(config: &'c ClientConfig, names: &[&str]) -> Result<Option<&'c str>, Error> {
    let mut found: Option<(&str, &str)> = None;
    for name in names {
        if let Some(value) = config.get(name) {
            match found {
                Some((first, earlier)) if earlier != value => {
                    return Err(Error::Config(format!(
                        "`{first}={earlier}` and `{name}={value}` name the same property with \
                         different values; set only one of them"
                    )));
                }
                Some(_) => {}
                None => found = Some((name, value)),
            }
        }
    }
    Ok(found.map(|(_, value)| value))
}

/// How long one record may take to be delivered: `message.timeout.ms`.
///
/// Zero means "forever" to librdkafka, which would let a publish outlast the
/// relay's lease: refused.
pub(crate) fn message_timeout(config: &ClientConfig) -> Result<Duration, Error> {
    let Some(value) = one_of(config, MESSAGE_TIMEOUT)? else {
        return Err(Error::Config(
            "`message.timeout.ms` is not set; set it below the relay's lease".into(),
        ));
    };
    let millis: u64 = value.trim().parse().map_err(|_| {
        Error::Config(format!(
            "`message.timeout.ms` is {value:?}, expected a number of milliseconds, e.g. 20000"
        ))
    })?;
    if millis == 0 {
        return Err(Error::Config(
            "`message.timeout.ms=0` lets a record wait forever, so a publish could outlast the \
             relay's lease and the records be published twice; set a value below the lease, \
             e.g. 20000"
                .into(),
        ));
    }
    Ok(Duration::from_millis(millis))
}

/// Checks `bootstrap.servers`, which librdkafka only parses when it first
/// connects (and then merely logs what it cannot use).
pub(crate) fn check_bootstrap(config: &ClientConfig) -> Result<(), Error> {
    let servers = match one_of(config, BOOTSTRAP)? {
        Some(servers) => servers,
        // librdkafka's own mock cluster needs no brokers.
        None if config.get("test.mock.num.brokers").is_some() => return Ok(()),
        None => {
            return Err(Error::Config(
                "`bootstrap.servers` is not set; set it to the brokers as `host:port`, comma \
                 separated, e.g. `kafka-1:9092,kafka-2:9092`"
                    .into(),
            ));
        }
    };
    if servers.trim().is_empty() {
        return Err(Error::Config(
            "`bootstrap.servers` is empty; set it to the brokers as `host:port`, comma \
             separated, e.g. `kafka-1:9092,kafka-2:9092`"
                .into(),
        ));
    }
    for entry in servers.split(',') {
        check_broker(entry.trim()).map_err(|problem| {
            Error::Config(format!(
                "`bootstrap.servers` is {servers:?}: {problem}; write each broker as \
                 `host:port` (IPv6 as `[::1]:9092`), comma separated"
            ))
        })?;
    }
    Ok(())
}

/// Checks one `[protocol://]host[:port]` entry of `bootstrap.servers`.
fn check_broker(entry: &str) -> Result<(), String> {
    if entry.is_empty() {
        return Err("it has an empty entry".into());
    }
    let address = match entry.split_once("://") {
        Some((protocol, rest)) => {
            let known = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
            if !known.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
                return Err(format!(
                    "entry `{entry}` names protocol `{protocol}`, not one of PLAINTEXT, SSL, \
                     SASL_PLAINTEXT, SASL_SSL"
                ));
            }
            rest
        }
        None => entry,
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("entry `{entry}` opens `[` without closing it"))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!(
                "entry `{entry}` has no valid IPv6 address in brackets"
            ));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("entry `{entry}` has `{after}` after `]`")),
            },
        }
    } else {
        match address.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!(
                    "entry `{entry}` has several `:`; put an IPv6 address in brackets"
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
    if !host_ok {
        return Err(format!("entry `{entry}` has no valid host name"));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => {
                return Err(format!(
                    "entry `{entry}` has port `{port}`, expected a number from 1 to 65535"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in pairs {
            config.set(*key, *value);
        }
        config
    }

    #[test]
    fn defaults_fill_only_unset_properties() {
        let mut c = config(&[("acks", "1"), ("compression.codec", "none")]);
        let applied = apply_defaults(&mut c);
        assert_eq!(
            applied,
            [
                "enable.idempotence=true",
                "linger.ms=0",
                "message.timeout.ms=20000",
                "enable.gapless.guarantee=true"
            ]
        );
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("compression.codec"), Some("none"));
        assert_eq!(c.get("compression.type"), None);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn an_alias_counts_as_set() {
        let mut c = config(&[
            ("delivery.timeout.ms", "5000"),
            ("queue.buffering.max.ms", "0"),
        ]);
        apply_defaults(&mut c);
        assert_eq!(c.get("message.timeout.ms"), None);
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(message_timeout(&c).unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn the_gapless_guarantee_follows_idempotence() {
        let mut on = config(&[]);
        apply_defaults(&mut on);
        assert_eq!(on.get("enable.gapless.guarantee"), Some("true"));
        assert!(keeps_partitions_gapless(&on));

        // librdkafka refuses the property without idempotence.
        let mut off = config(&[("enable.idempotence", "false")]);
        let applied = apply_defaults(&mut off);
        assert!(
            !applied.iter().any(|a| a.contains("gapless")),
            "{applied:?}"
        );
        assert_eq!(off.get("enable.gapless.guarantee"), None);
        assert!(!keeps_partitions_gapless(&off));

        let mut declined = config(&[("enable.gapless.guarantee", "false")]);
        apply_defaults(&mut declined);
        assert_eq!(declined.get("enable.gapless.guarantee"), Some("false"));
        assert!(!keeps_partitions_gapless(&declined));

        let mut explicit = config(&[
            ("enable.idempotence", "T"),
            ("enable.gapless.guarantee", "1"),
        ]);
        apply_defaults(&mut explicit);
        assert!(keeps_partitions_gapless(&explicit));
    }

    #[test]
    fn limited_retries_or_a_bare_configuration_give_no_guarantee() {
        for retries in ["retries", "message.send.max.retries"] {
            let mut limited = config(&[(retries, "5")]);
            apply_defaults(&mut limited);
            assert!(!keeps_partitions_gapless(&limited), "{retries}");
            let mut unlimited = config(&[(retries, "2147483647")]);
            apply_defaults(&mut unlimited);
            assert!(keeps_partitions_gapless(&unlimited), "{retries}");
        }
        // A producer made without the defaults (`KafkaSink::from_producer`).
        assert!(!keeps_partitions_gapless(&config(&[])));
        assert!(!keeps_partitions_gapless(&config(&[(
            "enable.idempotence",
            "true"
        )])));
    }

    #[test]
    fn message_timeout_must_be_finite_and_unambiguous() {
        assert!(message_timeout(&config(&[("message.timeout.ms", "0")])).is_err());
        assert!(message_timeout(&config(&[("message.timeout.ms", "soon")])).is_err());
        let both = config(&[
            ("message.timeout.ms", "1000"),
            ("delivery.timeout.ms", "2000"),
        ]);
        let error = message_timeout(&both).unwrap_err().to_string();
        assert!(error.contains("set only one"), "{error}");
        let same = config(&[
            ("message.timeout.ms", "1000"),
            ("delivery.timeout.ms", "1000"),
        ]);
        assert_eq!(message_timeout(&same).unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn good_bootstrap_strings_pass() {
        for servers in [
            "localhost:9092",
            "kafka-1:9092, kafka-2:9092",
            "kafka",
            "10.0.0.1:9093",
            "[::1]:9092",
            "[fe80::1]",
            "SSL://broker.example.com:9094",
            "sasl_plaintext://b_1.internal:19092",
        ] {
            let c = config(&[("bootstrap.servers", servers)]);
            check_bootstrap(&c).unwrap_or_else(|e| panic!("{servers}: {e}"));
        }
    }

    #[test]
    fn malformed_bootstrap_strings_fail() {
        for servers in [
            "",
            "  ",
            "localhost:",
            "localhost:port",
            "localhost:0",
            "localhost:70000",
            "a:9092,,b:9092",
            "a:9092,",
            "http://kafka:9092",
            "::1:9092",
            "[::1",
            "[::1]9092",
            "kafka host:9092",
            ":9092",
        ] {
            let c = config(&[("bootstrap.servers", servers)]);
            let error = check_bootstrap(&c).expect_err(servers);
            assert!(error.to_string().contains("bootstrap.servers"), "{error}");
        }
    }

    #[test]
    fn bootstrap_is_required_unless_mocked() {
        assert!(check_bootstrap(&ClientConfig::new()).is_err());
        assert!(check_bootstrap(&config(&[("test.mock.num.brokers", "1")])).is_ok());
    }
}
