//! Output for people: ages, tables, truncation.

use std::time::Duration;

/// An age in the largest two units: `3d 4h`, `12m 5s`, `800ms`.
pub(crate) fn age(age: Duration) -> String {
    let secs = age.as_secs();
    if secs == 0 {
        return format!("{}ms", age.as_millis());
    }
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in units {
        if rest >= size || !parts.is_empty() {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// `text` on one line, cut to `max` characters with an ellipsis.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Rows as columns aligned on the widest cell; the last column is not
/// padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_two_units() {
        assert_eq!(age(Duration::from_millis(250)), "250ms");
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(3 * 60 + 12)), "3m 12s");
        assert_eq!(
            age(Duration::from_secs(2 * 86_400 + 3 * 3_600 + 7)),
            "2d 3h"
        );
        assert_eq!(age(Duration::from_secs(3_600)), "1h 0m");
    }

    #[test]
    fn long_text_is_cut_on_one_line() {
        assert_eq!(cut("a\nb  c", 10), "a b c");
        assert_eq!(cut("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["1".to_owned(), "orders".to_owned(), "x".to_owned()],
            vec!["12".to_owned(), "p".to_owned(), "long last".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "TOPIC", "ERROR"], &rows),
            "ID  TOPIC   ERROR\n1   orders  x\n12  p       long last"
        );
    }
}
