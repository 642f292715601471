//! NATS subject rules, checked before anything reaches the server so that a
//! bad subject gets an error that says what is wrong with it.

/// Checks a subject that messages are published to: no wildcards.
pub fn check_publish_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, false)
}

/// Checks a subject to subscribe to: `*` may stand for one whole token and
/// `>` for the last one.
pub fn check_subscribe_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, true)
}

/// Checks a queue group name: not empty, no white space.
pub fn check_queue_group(queue: &str) -> Result<(), String> {
    if queue.is_empty() {
        return Err("queue group name is empty".into());
    }
    if queue.chars().any(char::is_whitespace) {
        return Err("queue group name contains white space".into());
    }
    Ok(())
}

fn check_tokens(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("subject is empty".into());
    }
    if subject.chars().any(char::is_whitespace) {
        return Err("subject contains white space".into());
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
    fn empty_tokens_and_spaces_fail() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a\tb"] {
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
}
