//! The merged values of one link, read through the key descriptors: one
//! rule for blank values (a blank value means "not set", for every key) and
//! one reader per form of value, with the key's own bounds and default.

use std::collections::HashMap;
use std::time::Duration;

use super::keys::{Default, Form, Key};
use super::ConfigError;

/// A link's values, keys in lower case, after precedence was applied.
pub(crate) struct Values<'a>(pub(crate) &'a HashMap<String, String>);

impl<'a> Values<'a> {
    /// The value of `key` without surrounding white space, or `None` when
    /// it is absent or blank.
    pub(crate) fn get(&self, key: &Key) -> Option<&'a str> {
        self.0
            .get(key.name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    /// True when `key` has a value.
    pub(crate) fn has(&self, key: &Key) -> bool {
        self.get(key).is_some()
    }

    /// A whole number within the key's range; its default, if it has one,
    /// when unset.
    pub(crate) fn count(&self, key: &Key) -> Result<Option<u64>, ConfigError> {
        let Form::Count { min, max, default } = key.form else {
            unreachable!("{} is not a count", key.name)
        };
        match self.get(key) {
            None => Ok(match default {
                Default::Value(n) => Some(n),
                Default::Unset(_) => None,
            }),
            Some(value) => match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ConfigError::new(
                    key.name,
                    value,
                    match max {
                        u64::MAX => format!("expected a whole number from {min}"),
                        max => format!("expected a whole number from {min} to {max}"),
                    },
                )),
            },
        }
    }

    /// A whole number that always has a default.
    pub(crate) fn count_or_default(&self, key: &Key) -> Result<u64, ConfigError> {
        Ok(self
            .count(key)?
            .unwrap_or_else(|| unreachable!("{} has no default", key.name)))
    }

    /// A duration within the key's bound; its default, if it has one, when
    /// unset.
    pub(crate) fn duration(&self, key: &Key) -> Result<Option<Duration>, ConfigError> {
        let Form::Duration {
            unit,
            min,
            max,
            default,
            zero_means_default,
        } = key.form
        else {
            unreachable!("{} is not a duration", key.name)
        };
        match self.get(key) {
            Some("0") if zero_means_default => Ok(None),
            None => Ok(match default {
                Default::Value(n) => Some(unit.of(n)),
                Default::Unset(_) => None,
            }),
            Some(value) => parse_duration(key.name, value, min, max).map(|n| Some(unit.of(n))),
        }
    }

    /// A duration that always has a default.
    pub(crate) fn duration_or_default(&self, key: &Key) -> Result<Duration, ConfigError> {
        Ok(self
            .duration(key)?
            .unwrap_or_else(|| unreachable!("{} has no default", key.name)))
    }

    /// A comma-separated list of durations within the key's bound; empty
    /// when unset.
    pub(crate) fn durations(&self, key: &Key) -> Result<Vec<Duration>, ConfigError> {
        let Form::Durations { unit, max } = key.form else {
            unreachable!("{} is not a list of durations", key.name)
        };
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .map(|entry| {
                parse_duration(key.name, entry, 1, max)
                    .map(|n| unit.of(n))
                    .map_err(|_| {
                        ConfigError::new(
                            key.name,
                            value,
                            format!("entry {entry:?} is not a whole number from 1 to {max}"),
                        )
                    })
            })
            .collect()
    }
}

/// A whole number from 1 to `max`.
fn parse_duration(key: &str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            key,
            value,
            format!("expected a whole number from {min} to {max}"),
        )),
    }
}
