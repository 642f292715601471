//! The README's tables that must say what the code does, read for the
//! tests that keep them equal (key tables, error texts).

/// The README's text between `<!-- {kind}: {name} -->` and
/// `<!-- end {kind} -->`.
pub(crate) fn section(kind: &str, name: &str) -> &'static str {
    let readme = include_str!("../README.md");
    let start = format!("<!-- {kind}: {name} -->\n");
    let from = readme
        .find(&start)
        .unwrap_or_else(|| panic!("README has no {start:?} marker"))
        + start.len();
    let end = format!("<!-- end {kind} -->");
    let to = from
        + readme[from..]
            .find(&end)
            .unwrap_or_else(|| panic!("README table {name:?} not closed by {end:?}"));
    &readme[from..to]
}

/// The first column of the README's errors table `name`, without its
/// backquotes: the error texts as the README quotes them.
pub(crate) fn quoted_errors(name: &str) -> Vec<String> {
    section("errors", name)
        .lines()
        .skip(2)
        .map(|row| {
            let cell = row
                .trim_start_matches("| ")
                .split(" | ")
                .next()
                .unwrap_or("");
            cell.trim_matches('`').to_string()
        })
        .collect()
}

/// Asserts that the README's errors table `name` quotes exactly `errors`,
/// in order.
pub(crate) fn assert_quotes(name: &str, errors: &[String]) {
    let quoted = quoted_errors(name);
    assert_eq!(
        quoted,
        errors,
        "README errors table {name:?} differs from the code's texts; its first column should \
         read:\n{}",
        errors
            .iter()
            .map(|e| format!("| `{e}` |"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
