//! The README's `wash` and `nats` commands cannot drift from what the
//! tests run.

use std::path::Path;

use anyhow::Result;
use messaging_nats_e2e::paths::repo_root;
use messaging_nats_e2e::readme::{blocks, readme, uses_wash_or_nats};

#[test]
fn every_wash_or_nats_block_is_run_by_a_test_or_marked_illustrative() -> Result<()> {
    let readme = readme()?;
    let mut problems = Vec::new();
    for block in blocks(&readme).iter().filter(|b| uses_wash_or_nats(b)) {
        let marker = block.marker.as_deref().unwrap_or_default();
        if let Some(reason) = marker
            .strip_prefix("<!-- illustrative:")
            .and_then(|rest| rest.strip_suffix("-->"))
        {
            if reason.trim().is_empty() {
                problems.push(format!(
                    "line {}: illustrative without a reason",
                    block.line
                ));
            }
            continue;
        }
        let Some((name, file)) = marker
            .strip_prefix("<!-- e2e: ")
            .and_then(|rest| rest.strip_suffix(") -->"))
            .and_then(|rest| rest.split_once(" ("))
        else {
            problems.push(format!(
                "line {}: a wash/nats block needs <!-- e2e: NAME (TEST FILE) --> or \
                 <!-- illustrative: REASON --> above it",
                block.line
            ));
            continue;
        };
        let test = std::fs::read_to_string(repo_root().join(Path::new(file))).unwrap_or_default();
        if !test.contains(&format!("block(\"{name}\")")) {
            problems.push(format!(
                "line {}: {file} does not run the block {name:?}",
                block.line
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
