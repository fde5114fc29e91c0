//! Text for people: numbers with thousands separators, tables that fit the
//! terminal, and short quotes of long input.

use std::io::{self, IsTerminal, Write};

/// The width tables are fitted to when nothing says otherwise.
pub const DEFAULT_WIDTH: usize = 100;

/// The width to fit output to: `COLUMNS` when set, else the terminal's
/// width when standard output is one, else [`DEFAULT_WIDTH`].
pub fn output_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return columns;
    }
    if io::stdout().is_terminal() {
        if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
            return usize::from(w);
        }
    }
    DEFAULT_WIDTH
}

/// `n` with a comma every three digits: `24,921,396`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` and `noun`, plural unless `n` is 1: `1 scenario`, `2 scenarios`,
/// with thousands separators.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", thousands(n))
    }
}

/// A ratio as the tables print it: three decimals.
pub fn ratio(value: f64) -> String {
    format!("{value:.3}")
}

/// `text` in backquotes, control characters escaped, cut to its first
/// `max` characters (then followed by `…`): for echoing input back in an
/// error.
pub fn excerpt(text: &str, max: usize) -> String {
    let head: String = text.chars().take(max).collect();
    let cut = if head.len() < text.len() { "…" } else { "" };
    format!("`{}`{cut}", head.escape_debug())
}

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: flush left.
    Left,
    /// Numbers: flush right.
    Right,
}

/// A table of text cells: a header row, rows, and per-column alignment.
/// The first `key_columns` columns name the row; when the table is wider
/// than the output, the other columns are split into blocks printed one
/// under the other, each repeating the key columns.
#[derive(Clone, Debug)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
    key_columns: usize,
}

/// The space between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers; the first `key_columns` name the
    /// row and are left-aligned, the rest are right-aligned.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>, key_columns: usize) -> Self {
        let header: Vec<String> = header.into_iter().map(Into::into).collect();
        let align = (0..header.len())
            .map(|i| {
                if i < key_columns {
                    Align::Left
                } else {
                    Align::Right
                }
            })
            .collect();
        Self {
            header,
            align,
            rows: Vec::new(),
            key_columns,
        }
    }

    /// Left-aligns one more column (text among numbers).
    pub fn left(mut self, column: usize) -> Self {
        self.align[column] = Align::Left;
        self
    }

    /// Adds a row (as many cells as there are columns; missing cells are
    /// blank).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|i| {
                std::iter::once(&self.header[i])
                    .chain(self.rows.iter().map(|r| &r[i]))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The table as lines no wider than `width` where the columns allow it
    /// (a single column wider than `width` is printed whole), each line
    /// prefixed with `indent`.
    pub fn lines(&self, width: usize, indent: &str) -> Vec<String> {
        let widths = self.widths();
        let key_width: usize = widths[..self.key_columns]
            .iter()
            .map(|w| w + GAP.len())
            .sum();
        // Split the value columns into blocks that fit beside the keys.
        let mut blocks: Vec<Vec<usize>> = Vec::new();
        let mut used = indent.len() + key_width;
        for (column, &column_width) in widths.iter().enumerate().skip(self.key_columns) {
            match blocks.last_mut() {
                Some(block) if used + column_width <= width => block.push(column),
                _ => {
                    blocks.push(vec![column]);
                    used = indent.len() + key_width;
                }
            }
            used += column_width + GAP.len();
        }
        if blocks.is_empty() {
            blocks.push(Vec::new());
        }
        let mut lines = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            if index > 0 {
                lines.push(String::new());
            }
            let columns: Vec<usize> = (0..self.key_columns).chain(block.iter().copied()).collect();
            for row in std::iter::once(&self.header).chain(&self.rows) {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|&c| {
                        let w = widths[c];
                        match self.align[c] {
                            Align::Left => format!("{:<w$}", row[c]),
                            Align::Right => format!("{:>w$}", row[c]),
                        }
                    })
                    .collect();
                lines.push(format!("{indent}{}", cells.join(GAP).trim_end()));
            }
        }
        lines
    }

    /// Writes [`Table::lines`].
    ///
    /// # Errors
    /// Errors writing to `out`.
    pub fn write(&self, out: &mut impl Write, width: usize, indent: &str) -> io::Result<()> {
        for line in self.lines(width, indent) {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// `words` joined by spaces into lines of at most `width` characters
/// (a word longer than that gets a line of its own), each prefixed with
/// `indent`.
pub fn wrap(words: &[String], width: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::from(indent);
    for word in words {
        let len = line.chars().count();
        if len > indent.len() && len + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, String::from(indent)));
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if line.len() > indent.len() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(24_921_396), "24,921,396");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(1, "scenario"), "1 scenario");
        assert_eq!(count(0, "violation"), "0 violations");
        assert_eq!(count(1_500, "schedule"), "1,500 schedules");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("enable", 80), "`enable`");
        assert_eq!(excerpt("a\0b", 80), "`a\\0b`");
        let long = "x".repeat(1_000);
        assert_eq!(excerpt(&long, 80), format!("`{}`…", "x".repeat(80)));
    }

    #[test]
    fn a_table_fits_and_splits_into_blocks() {
        let mut table = Table::new(["name", "a", "b", "c"], 1);
        table.row(["first", "1.000", "22.000", "333.000"]);
        table.row(["second", "4", "5", "6"]);
        let lines = table.lines(100, "");
        assert_eq!(
            lines,
            [
                "name        a       b        c",
                "first   1.000  22.000  333.000",
                "second      4       5        6",
            ]
        );
        let narrow = table.lines(24, "");
        assert!(
            narrow.iter().all(|l| l.chars().count() <= 24),
            "{narrow:#?}"
        );
        assert_eq!(narrow[0], "name        a       b");
        assert_eq!(narrow[3], "");
        assert_eq!(narrow[4], "name          c");
        assert_eq!(narrow[5], "first   333.000");
    }

    #[test]
    fn words_wrap_at_the_width() {
        let words: Vec<String> = ["aaa", "bbb", "ccc"].map(String::from).to_vec();
        assert_eq!(wrap(&words, 9, "  "), ["  aaa bbb", "  ccc"]);
        assert_eq!(wrap(&words, 100, ""), ["aaa bbb ccc"]);
    }
}
