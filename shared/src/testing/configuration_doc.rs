//! Keeps `docs/configuration.md` true: each binary's tests compare its clap
//! definition (every argument with an environment variable, its flag and its
//! default) with the tables of the common section and the binary's section.

use std::collections::BTreeMap;

/// One documented setting: its flag and the Default column as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documented {
    pub flag: String,
    pub default: String,
}

const DOC: &str = include_str!("../../../docs/configuration.md");

/// The settings documented in the tables under `## <section>`.
pub fn documented(section: &str) -> BTreeMap<String, Documented> {
    let heading = format!("## {section}");
    let mut in_section = false;
    let mut settings = BTreeMap::new();
    for line in DOC.lines() {
        if line.starts_with("## ") {
            in_section = line.trim() == heading;
            continue;
        }
        if !in_section || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", variable, flag, default, meaning..., ""]
        if cells.len() < 5 {
            continue;
        }
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        settings.insert(
            unquote(cells[1]),
            Documented {
                flag: unquote(cells[2]),
                default: cells[3].to_owned(),
            },
        );
    }
    settings
}

/// Every mismatch between `command` and the documentation of `section`
/// (with the settings common to every binary).
pub fn mismatches(command: &clap::Command, section: &str) -> Vec<String> {
    let mut docs = documented("Common to every binary");
    docs.extend(documented(section));
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        seen.push(env.to_owned());
        let Some(doc) = docs.get(env) else {
            problems.push(format!("{env} is not documented in section {section:?}"));
            continue;
        };
        let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
        if doc.flag != flag {
            problems.push(format!("{env}: flag is {flag}, documented {}", doc.flag));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .filter_map(|v| v.to_str().map(str::to_owned))
            .collect();
        match defaults.as_slice() {
            [] => {}
            [value] if value.is_empty() => {
                if !doc.default.starts_with("empty") {
                    problems.push(format!(
                        "{env}: default is empty, documented {}",
                        doc.default
                    ));
                }
            }
            values => {
                let expected = format!("`{}`", values.join(","));
                if !doc.default.starts_with(&expected) {
                    problems.push(format!(
                        "{env}: default is {expected}, documented {}",
                        doc.default
                    ));
                }
            }
        }
    }
    for documented in docs.keys() {
        if !seen.contains(documented) {
            problems.push(format!(
                "{documented} is documented but not a setting of {section}"
            ));
        }
    }
    problems
}

/// Fails with every mismatch of [`mismatches`].
///
/// # Panics
/// When the documentation and the definition disagree.
pub fn assert_documented(command: &clap::Command, section: &str) {
    let problems = mismatches(command, section);
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date:\n{}",
        problems.join("\n")
    );
}
