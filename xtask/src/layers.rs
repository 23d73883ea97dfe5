//! The layering rule of the `jitproxy` crate, checked from its sources: each
//! top-level module imports only from modules in lower layers (its own
//! submodules aside). `cargo xtask lint` runs it.
//!
//! It reads `crate::…` paths (also inside `use crate::{…}` groups) and
//! `super::…` paths that climb to the crate root. It is a text check, not a
//! compiler: a path spelled another way (a re-export, a macro) is not seen.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// Top-level modules, lowest layer first. A module may import from any
/// module in an earlier row; modules in the same row may not import each
/// other.
const LAYERS: &[&[&str]] = &[
    &["time", "metrics"],
    &["config"],
    &["host"],
    &["kernel"],
    &["audit"],
    &["access"],
    &["proxy", "store", "notify"],
    &["control", "bench"],
    &["daemon"],
    &["cmd"],
];

/// One import that climbs or crosses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub from: String,
    pub to: String,
}

/// What the check saw.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    /// Imports between different top-level modules, by (from, to).
    pub edges: BTreeMap<(String, String), usize>,
    pub violations: Vec<Violation>,
}

/// Checks every `.rs` file under `src` (the crate's `src/`).
pub fn check(src: &Path) -> Result<Report> {
    let mut report = Report::default();
    for entry in fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let module = name.strip_suffix(".rs").unwrap_or(&name);
        if !matches!(module, "lib" | "main") && layer(module).is_none() {
            bail!("module `{module}` has no layer; add it to LAYERS in xtask/src/layers.rs");
        }
    }
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let Some(module) = module_path(rel) else {
            continue;
        };
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        report.files += 1;
        for (line, to) in imports(&module, &text) {
            let from = &module[0];
            // Other names at the root (a test module's `super::*`, items of
            // lib.rs) are not modules.
            if &to == from || layer(&to).is_none() {
                continue;
            }
            *report.edges.entry((from.clone(), to.clone())).or_default() += 1;
            if !allowed(from, &to) {
                report.violations.push(Violation {
                    file: file.clone(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    Ok(report)
}

/// Runs the check on the jitproxy crate and fails on any violation.
pub fn enforce(src: &Path) -> Result<()> {
    let report = check(src)?;
    for v in &report.violations {
        eprintln!(
            "{}:{}: `{}` imports from `{}`, which is not below it",
            v.file.display(),
            v.line,
            v.from,
            v.to
        );
    }
    if !report.violations.is_empty() {
        bail!(
            "{} import(s) break the layering in {} (see xtask/src/layers.rs)",
            report.violations.len(),
            src.display()
        );
    }
    let total: usize = report.edges.values().sum();
    eprintln!(
        "layers: {total} imports between modules in {} files, all downward",
        report.files
    );
    Ok(())
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

fn allowed(from: &str, to: &str) -> bool {
    matches!((layer(from), layer(to)), (Some(f), Some(t)) if t < f)
}

/// The module path of a file under `src/` (`proxy/origin.rs` is
/// `[proxy, origin]`); `None` for the crate roots.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && matches!(stem, "lib" | "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// The top-level modules that the text of module `module` names through
/// `crate::` or `super::` paths, with their line numbers.
fn imports(module: &[String], text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = find_path_start(rest) {
            let tail = &rest[at..];
            let (depth_left, after) = climb(module, tail);
            rest = &tail[1..];
            let Some(after) = after else { continue };
            if depth_left > 0 {
                continue;
            }
            // At the crate root: the next segment (or group) names modules.
            for name in first_segments(after, text, i) {
                out.push((i + 1, name));
            }
        }
    }
    out
}

/// The next `crate::` or `super::` in `s`, at a word boundary.
fn find_path_start(s: &str) -> Option<usize> {
    let starts = ["crate::", "super::"];
    starts
        .iter()
        .filter_map(|p| {
            s.match_indices(p)
                .find(|(at, _)| {
                    *at == 0
                        || !s[..*at]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
                .map(|(at, _)| at)
        })
        .min()
}

/// Follows `crate::` or a run of `super::` from `module`: how many levels
/// below the crate root the path still is (0: at the root), and the text
/// after the prefix.
fn climb<'a>(module: &[String], path: &'a str) -> (usize, Option<&'a str>) {
    if let Some(after) = path.strip_prefix("crate::") {
        return (0, Some(after));
    }
    let mut supers = 0;
    let mut rest = path;
    while let Some(after) = rest.strip_prefix("super::") {
        supers += 1;
        rest = after;
    }
    (module.len().saturating_sub(supers), Some(rest))
}

/// The first path segments after the root: `a::b` gives `a`; `{a::x, b}`
/// gives `a` and `b` (a group may span lines: read on in `text`).
fn first_segments(after: &str, text: &str, line: usize) -> Vec<String> {
    let after = after.trim_start();
    if let Some(group) = after.strip_prefix('{') {
        let mut body = group.to_owned();
        if !balanced(&body) {
            for more in text.lines().skip(line + 1) {
                body.push(' ');
                body.push_str(more.split("//").next().unwrap_or(""));
                if balanced(&body) {
                    break;
                }
            }
        }
        return top_level_items(&body);
    }
    ident(after).into_iter().collect()
}

/// Whether the group opened before `s` closes within it.
fn balanced(s: &str) -> bool {
    let mut depth = 1i32;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return true;
        }
    }
    false
}

/// The first identifier of each comma-separated item at depth 0 of a group.
fn top_level_items(body: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = true;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                start = false;
                items.extend(ident(&body[i..]));
            }
            _ => {}
        }
    }
    items.retain(|s| s != "self");
    items
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_owned())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(module: &[&str], text: &str) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| (*s).to_owned()).collect();
        imports(&module, text).into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn crate_paths_and_groups_are_read() {
        let text = "use crate::{\n    access::Access,\n    host::{proc, users},\n    time,\n};\nlet x = crate::audit::Event::new(k);\n";
        assert_eq!(
            names(&["proxy", "origin"], text),
            ["access", "host", "time", "audit"]
        );
    }

    #[test]
    fn super_climbs_to_the_root_only_from_a_top_module() {
        assert_eq!(names(&["proxy"], "use super::config::Limit;"), ["config"]);
        assert!(names(&["proxy", "record"], "use super::origin::Origin;").is_empty());
        assert_eq!(
            names(&["proxy", "record"], "use super::super::access::X;"),
            ["access"]
        );
    }

    #[test]
    fn upward_imports_are_refused() {
        assert!(allowed("proxy", "access"));
        assert!(!allowed("access", "proxy"));
        assert!(!allowed("proxy", "store"), "same layer");
        assert!(!allowed("audit", "cmd"));
        assert!(!allowed("unknown", "time"), "a module without a layer");
    }
}
