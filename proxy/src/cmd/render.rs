//! Output for people and scripts: aligned tables, pretty JSON.
//!
//! Every table cell is escaped ([`Escaped`]) before it is measured and
//! printed, so no caller can let a terminal control through a table.

use super::escape::Escaped;

pub(super) fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    print_table_opt(headers, rows, true);
}

pub(super) fn print_table_opt<const N: usize>(
    headers: &[&str; N],
    rows: &[[String; N]],
    with_header: bool,
) {
    print!("{}", render_table(headers, rows, with_header));
}

/// The table as printed: columns padded to their widest escaped cell, two
/// spaces apart, one line each (with the headers first if `with_header`).
fn render_table<const N: usize>(
    headers: &[&str; N],
    rows: &[[String; N]],
    with_header: bool,
) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| Escaped(cell).to_string()))
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    if with_header {
        push_line(&mut out, headers, &widths);
    }
    for row in &rows {
        push_line(&mut out, row, &widths);
    }
    out
}

/// Appends one line of cells, each but the last padded to its width.
fn push_line<const N: usize>(out: &mut String, cells: &[impl AsRef<str>; N], widths: &[usize; N]) {
    let mut line = String::new();
    for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
        let cell = cell.as_ref();
        if i + 1 == N {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<w$}  "));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

pub(super) fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: [&str; 3]) -> [String; 3] {
        cells.map(str::to_owned)
    }

    #[test]
    fn columns_line_up() {
        let table = render_table(
            &["USER", "PROCESS", "EVENT"],
            &[
                row(["alice", "curl (1)", "denied"]),
                row(["Zoë", "café (22)", "ok"]),
            ],
            true,
        );
        assert_eq!(
            table,
            "USER   PROCESS    EVENT\n\
             alice  curl (1)   denied\n\
             Zoë    café (22)  ok\n"
        );
    }

    #[test]
    fn cells_are_escaped_and_measured_escaped() {
        let table = render_table(
            &["PROCESS", "EVENT"],
            &[
                ["\x1b[2K\x1b[1Aevil (7)".to_owned(), "denied\r\n".to_owned()],
                ["sh (8)".to_owned(), "a\u{202e}b".to_owned()],
            ],
            false,
        );
        assert!(
            !table.contains('\x1b') && !table.contains('\r'),
            "{table:?}"
        );
        assert!(!table.contains('\u{202e}'), "{table:?}");
        assert_eq!(
            table,
            "\\x1b[2K\\x1b[1Aevil (7)  denied\\r\\n\n\
             sh (8)                  a\\u{202e}b\n"
        );
    }

    #[test]
    fn an_empty_table_without_header_prints_nothing() {
        assert_eq!(render_table::<2>(&["A", "B"], &[], false), "");
    }
}
