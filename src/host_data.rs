//! The start-up handshake: the host writes one line on the provider's
//! standard input, base64 of a JSON `HostData`. Read here rather than by
//! the SDK so that a malformed line ends the process with a message that
//! says what is wrong without quoting the data, which holds seeds and keys.

use std::io::BufRead;

use base64::Engine as _;
use wasmcloud_provider_sdk::core::HostData;

/// Largest handshake line read. Real ones are a few KiB (more with many
/// links); the bound keeps a stream without a newline from filling memory.
const MAX_HOST_DATA_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and parses the handshake line from `input`.
pub fn read(input: impl BufRead) -> Result<HostData, String> {
    let mut line = String::new();
    std::io::Read::take(input, MAX_HOST_DATA_BYTES)
        .read_line(&mut line)
        .map_err(|err| format!("cannot read host data from standard input: {err}"))?;
    let line = line.trim();
    if line.is_empty() {
        return Err(
            "no host data on standard input: this program is started by a wasmCloud \
                    host, which writes it there (base64 of a JSON HostData, one line)"
                .into(),
        );
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|err| {
            let at = match err {
                base64::DecodeError::InvalidByte(offset, _)
                | base64::DecodeError::InvalidLastSymbol(offset, _) => {
                    format!(" (offset {offset})")
                }
                _ => String::new(),
            };
            format!("host data on standard input is not valid base64{at}")
        })?;
    serde_json::from_slice(&json).map_err(|err| {
        // serde's message for a wrong type quotes the value: only the kind
        // of problem and its position are passed on.
        let problem = err.to_string();
        let what = if problem.starts_with("missing field") || problem.starts_with("unknown field") {
            problem
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            match err.classify() {
                serde_json::error::Category::Data => "a field has the wrong type".to_string(),
                _ => "it is not valid JSON".to_string(),
            }
        };
        format!(
            "host data on standard input is not a valid HostData: {what} (line {}, column {})",
            err.line(),
            err.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json) + "\r\n"
    }

    #[test]
    fn a_valid_line_parses() {
        let data = read(
            encoded(
                r#"{"host_id":"h","lattice_rpc_prefix":"l","env_values":{},"link_definitions":[]}"#,
            )
            .as_bytes(),
        )
        .expect("valid");
        assert_eq!(data.host_id, "h");
        assert_eq!(data.lattice_rpc_prefix, "l");
    }

    #[test]
    fn empty_input_says_a_host_starts_the_program() {
        let err = read(&b""[..]).expect_err("empty");
        assert!(err.contains("wasmCloud host"), "{err}");
    }

    #[test]
    fn bad_base64_is_named_without_the_data() {
        let err = read(&b"not base64 S3CR3T!\n"[..]).expect_err("bad");
        assert!(err.contains("not valid base64"), "{err}");
        assert!(!err.contains("S3CR3T"), "{err}");
    }

    #[test]
    fn wrong_types_are_named_without_quoting_values() {
        let err = read(encoded(r#"{"lattice_rpc_user_seed": 5, "host_id": "S3CR3T"}"#).as_bytes())
            .expect_err("bad");
        assert!(err.contains("wrong type"), "{err}");
        let err = read(encoded(r#"{"host_id": ["S3CR3T"]}"#).as_bytes()).expect_err("bad");
        assert!(!err.contains("S3CR3T"), "{err}");
        let err = read(encoded(r#"{"host_id": "S3CR3T""#).as_bytes()).expect_err("bad");
        assert!(
            err.contains("not valid JSON") && !err.contains("S3CR3T"),
            "{err}"
        );
    }
}
