//! Output for people and scripts: aligned tables, pretty JSON.

pub(super) fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    print_table_opt(headers, rows, true);
}

pub(super) fn print_table_opt<const N: usize>(
    headers: &[&str; N],
    rows: &[[String; N]],
    with_header: bool,
) {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    if with_header {
        line(headers.to_vec());
    }
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
