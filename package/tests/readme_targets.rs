//! The README's table of targets names every target of the archive, each
//! with the Rust target it is built as, in the packaging tool's order.

use messaging_nats_package::targets::TARGETS;

#[test]
fn the_readme_table_of_targets_is_the_packaging_tools() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split_once("<!-- targets -->")
        .and_then(|(_, rest)| rest.split_once("<!-- end targets -->"))
        .map(|(table, _)| table)
        .expect("the README's targets table between its markers");
    let rows: Vec<(String, String)> = table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<_> = line
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            (cells[1].to_string(), cells[2].to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = TARGETS
        .iter()
        .map(|t| (t.host_name.to_string(), t.rust_triple.to_string()))
        .collect();
    assert_eq!(rows, expected);
}
