//! The README's shell blocks, as the tests run them: a block that uses
//! `wash` or `nats` is named by an `<!-- e2e: NAME (test file) -->` line
//! right above it, and a test runs that very text (placeholders filled
//! in), or it is marked `<!-- illustrative: why -->`.

use anyhow::{bail, Context as _, Result};

/// One fenced shell block and the marker line above it, if any.
#[derive(Debug)]
pub struct Block {
    /// The marker line above the block (`<!-- ... -->`), trimmed.
    pub marker: Option<String>,
    pub text: String,
    /// The block's first line number in the README.
    pub line: usize,
}

/// The README of the repository.
pub fn readme() -> Result<String> {
    let path = crate::paths::repo_root().join("README.md");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every ```sh / ```shell block of `readme`.
pub fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines().enumerate().peekable();
    let mut previous: Option<&str> = None;
    while let Some((number, line)) = lines.next() {
        if matches!(line.trim(), "```sh" | "```shell" | "```bash") {
            let marker = previous
                .map(str::trim)
                .filter(|p| p.starts_with("<!--"))
                .map(str::to_string);
            let mut text = String::new();
            for (_, body) in lines.by_ref() {
                if body.trim() == "```" {
                    break;
                }
                text.push_str(body);
                text.push('\n');
            }
            blocks.push(Block {
                marker,
                text,
                line: number + 1,
            });
            previous = None;
            continue;
        }
        if !line.trim().is_empty() {
            previous = Some(line);
        }
    }
    blocks
}

/// Every ```yaml block marked `<!-- wadm: NAME -->`: (NAME, text).
pub fn manifests(readme: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- wadm: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        if lines.next().map(str::trim) != Some("```yaml") {
            continue;
        }
        let text: String = lines
            .by_ref()
            .take_while(|body| body.trim() != "```")
            .map(|body| format!("{body}\n"))
            .collect();
        found.push((name.to_string(), text));
    }
    found
}

/// True for a block that runs `wash` or `nats` commands.
pub fn uses_wash_or_nats(block: &Block) -> bool {
    block.text.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("wash ") || line.starts_with("nats ")
    })
}

/// The text of the block marked `<!-- e2e: NAME ... -->`.
pub fn block(name: &str) -> Result<String> {
    let readme = readme()?;
    let prefix = format!("<!-- e2e: {name} ");
    let found: Vec<_> = blocks(&readme)
        .into_iter()
        .filter(|b| b.marker.as_deref().is_some_and(|m| m.starts_with(&prefix)))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.text.clone()),
        [] => bail!("README has no block marked {prefix}...-->"),
        _ => bail!("README has more than one block marked {prefix}...-->"),
    }
}

/// `text` with each `(from, to)` replaced; each `from` must be in it.
pub fn fill(text: &str, placeholders: &[(&str, &str)]) -> Result<String> {
    let mut filled = text.to_string();
    for (from, to) in placeholders {
        if !filled.contains(from) {
            bail!("placeholder {from:?} not in:\n{text}");
        }
        filled = filled.replace(from, to);
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_with_the_marker_above_them() {
        let readme =
            "text\n\n<!-- e2e: one (x) -->\n```sh\nwash a\nwash b\n```\n\n```shell\nls\n```\n";
        let blocks = blocks(readme);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].marker.as_deref(), Some("<!-- e2e: one (x) -->"));
        assert_eq!(blocks[0].text, "wash a\nwash b\n");
        assert!(uses_wash_or_nats(&blocks[0]));
        assert_eq!(blocks[1].marker, None);
        assert!(!uses_wash_or_nats(&blocks[1]));
    }

    #[test]
    fn manifests_are_the_yaml_blocks_marked_wadm() {
        let readme = "<!-- wadm: a -->\n```yaml\nkind: A\n```\n\n```yaml\nkind: B\n```\n";
        assert_eq!(
            manifests(readme),
            vec![("a".to_string(), "kind: A\n".to_string())]
        );
    }

    #[test]
    fn a_missing_placeholder_is_an_error() {
        assert_eq!(fill("a b", &[("a", "c")]).unwrap(), "c b");
        assert!(fill("a b", &[("x", "c")]).is_err());
    }
}
