//! NATS subject rules, checked before anything reaches the server so that a
//! bad subject gets an error that says what is wrong with it, and the shared
//! connection never sees a protocol line the server would close it for.

use std::fmt;

/// Longest subject (and reply-to subject) the provider sends or subscribes
/// to, in bytes. nats-server closes a connection whose protocol line exceeds
/// its `max_control_line` (4,096 bytes by default); the longest line the
/// provider writes is `HPUB <subject> <reply-to> <header size> <total size>`,
/// so two subjects of this length plus the protocol's own fields (under 40
/// bytes) stay well below that default.
pub const MAX_SUBJECT_LEN: usize = 1024;

/// Checks a subject that messages are published to: no wildcards.
pub fn check_publish_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, false)
}

/// Checks a subject to subscribe to: `*` may stand for one whole token and
/// `>` for the last one.
pub fn check_subscribe_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, true)
}

/// Checks a queue group name: not empty, no white space or control bytes.
pub fn check_queue_group(queue: &str) -> Result<(), String> {
    if queue.is_empty() {
        return Err("queue group name is empty".into());
    }
    if queue.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "queue group name is {} bytes, longer than the limit of {MAX_SUBJECT_LEN}",
            queue.len()
        ));
    }
    if queue.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("queue group name contains white space or a control character".into());
    }
    Ok(())
}

fn check_tokens(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("subject is empty".into());
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "subject is {} bytes, longer than the limit of {MAX_SUBJECT_LEN}",
            subject.len()
        ));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("subject contains white space or a control character".into());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (index, token) in tokens.iter().enumerate() {
        match *token {
            "" => {
                return Err("subject has an empty token (leading, trailing or double '.')".into())
            }
            "*" | ">" if !wildcards => {
                return Err(format!(
                    "wildcard '{token}' is not allowed in a subject that is published to"
                ))
            }
            ">" if index != last => return Err("'>' may only be the last token".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A subject pattern as NATS permissions write them: `*` matches one token,
/// a final `>` one or more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        check_subscribe_subject(pattern)?;
        Ok(Self(pattern.to_string()))
    }

    /// True if `subject` (a valid subject without wildcards) matches.
    pub fn matches(&self, subject: &str) -> bool {
        let mut tokens = subject.split('.');
        for pattern in self.0.split('.') {
            match (pattern, tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (literal, Some(token)) if literal == token => {}
                _ => return false,
            }
        }
        tokens.next().is_none()
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_subjects_pass() {
        assert!(check_publish_subject("orders.created").is_ok());
        assert!(check_subscribe_subject("orders.*.created").is_ok());
        assert!(check_subscribe_subject("orders.>").is_ok());
    }

    #[test]
    fn empty_tokens_spaces_and_control_bytes_fail() {
        for bad in [
            "", "a..b", ".a", "a.", "a b", "a\tb", "a\rb", "a\nb", "a\0b",
        ] {
            assert!(check_subscribe_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_fail_for_publish() {
        assert!(check_publish_subject("a.*").is_err());
        assert!(check_publish_subject("a.>").is_err());
    }

    #[test]
    fn full_wildcard_must_be_last() {
        assert!(check_subscribe_subject("a.>.b").is_err());
    }

    #[test]
    fn subject_longer_than_the_limit_fails_naming_the_limit() {
        let at_limit = "a".repeat(MAX_SUBJECT_LEN);
        let over = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert!(check_publish_subject(&at_limit).is_ok());
        let err = check_publish_subject(&over).expect_err("too long");
        assert!(err.contains("1024"), "{err}");
        assert!(check_queue_group(&over).is_err());
    }

    #[test]
    fn patterns_match_as_nats_permissions_do() {
        let p = |s: &str| SubjectPattern::parse(s).unwrap();
        assert!(p("wasmbus.>").matches("wasmbus.ctl.x"));
        assert!(p("wasmbus.>").matches("wasmbus.x"));
        assert!(!p("wasmbus.>").matches("wasmbus"));
        assert!(!p("wasmbus.>").matches("wasmbusx.y"));
        assert!(p("*.*.wrpc.>").matches("default.echo.wrpc.0.0.1.f"));
        assert!(!p("*.*.wrpc.>").matches("default.wrpc.x"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.c.d"));
        assert!(!p("a.*").matches("a"));
        assert!(p("$SYS.>").matches("$SYS.REQ.SERVER.PING"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exact.more"));
    }
}
