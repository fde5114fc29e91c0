//! Measurement tables on the console: a title, a header and rows of
//! right-aligned numbers after left-aligned labels, each line printed whole
//! so that nothing another CPU prints can land inside it. Both kernels print
//! their tables with it.

use core::fmt::{self, Write};

use crate::check::Message;
use crate::println;

/// A column: its heading and width; labels align left, numbers right.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// The heading.
    pub title: &'static str,
    /// Characters wide.
    pub width: usize,
    /// Whether the column holds labels (left-aligned).
    pub label: bool,
}

impl Column {
    /// A label column.
    pub const fn label(title: &'static str, width: usize) -> Self {
        Column {
            title,
            width,
            label: true,
        }
    }

    /// A number column.
    pub const fn number(title: &'static str, width: usize) -> Self {
        Column {
            title,
            width,
            label: false,
        }
    }
}

/// A table being printed.
#[derive(Debug)]
pub struct Table<'a> {
    columns: &'a [Column],
}

impl<'a> Table<'a> {
    /// Prints an empty line, `title` and the header.
    pub fn start(title: fmt::Arguments<'_>, columns: &'a [Column]) -> Self {
        println!();
        println!("{title}");
        let table = Table { columns };
        let titles: [&dyn fmt::Display; 16] = core::array::from_fn(|i| {
            columns
                .get(i)
                .map_or(&"" as &dyn fmt::Display, |c| &c.title as &dyn fmt::Display)
        });
        table.row(&titles[..columns.len()]);
        table
    }

    /// Prints one row; `cells` are matched to the columns in order.
    pub fn row(&self, cells: &[&dyn fmt::Display]) {
        let mut line = Message::new(format_args!(""));
        for (i, (column, cell)) in self.columns.iter().zip(cells).enumerate() {
            if i > 0 {
                let _ = line.write_str(" ");
            }
            let _ = if column.label {
                write!(line, "{:<width$}", Fmt(cell), width = column.width)
            } else {
                write!(line, "{:>width$}", Fmt(cell), width = column.width)
            };
        }
        println!("{}", line.as_str().trim_end());
    }
}

/// Lets a `&dyn Display` take width and alignment.
struct Fmt<'a>(&'a &'a dyn fmt::Display);

impl fmt::Display for Fmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(Message::new(format_args!("{}", self.0)).as_str())
    }
}
