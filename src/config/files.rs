//! Files that config keys name: read bounded, and `.creds` files parsed.

use std::path::Path;

/// Largest file the provider reads for a config key (CA, certificate, key,
/// credentials): real ones are a few KiB, and a bound keeps a path such as
/// `/dev/zero` or a huge file from exhausting memory.
pub(crate) const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// A user JWT and seed, as a `.creds` file holds them.
pub(crate) struct Credentials {
    pub(crate) jwt: String,
    pub(crate) seed: String,
}

/// Reads and parses a `.creds` file (bounded). The error names what is
/// wrong, never the content.
pub(crate) fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let text = read_bounded(path)?;
    // A creds file holds two armoured blocks: the user JWT, then the seed.
    // Each block's body is the first non-empty line after its opening line.
    let block = |opening: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|line| line.starts_with("-----BEGIN") && line.contains(opening))?;
        lines.find(|line| !line.is_empty()).map(str::to_string)
    };
    let jwt = block("USER JWT").ok_or("holds no user JWT block")?;
    let seed = block("NKEY SEED").ok_or("holds no nkey seed block")?;
    nkeys::KeyPair::from_seed(&seed).map_err(|_| "its nkey seed is not valid")?;
    Ok(Credentials { jwt, seed })
}

/// Reads a file named in config: a regular file (not a device or pipe,
/// which could block or never end) of at most [`MAX_CONFIG_FILE_BYTES`].
pub(crate) fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read: {err}"))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(format!(
            "is larger than the limit of {MAX_CONFIG_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".into())
}
