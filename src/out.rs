//! Standard output. `print!` and `println!` panic once the reader has gone
//! (`hourglass reconcile | head`, `hourglass stack status | head -3`); these
//! drop what nobody reads instead, and the command finishes its work (a
//! `stack down` piped into `head -1` still stops every server).

use std::io::{ErrorKind, Write};

/// `print!`, except that a closed pipe drops the text.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), false)
    };
}
pub(crate) use out;

/// `println!`, except that a closed pipe drops the line.
macro_rules! outln {
    () => {
        $crate::out::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*), true)
    };
}
pub(crate) use outln;

pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let mut written = stdout.write_fmt(args);
    if newline {
        written = written.and_then(|()| stdout.write_all(b"\n"));
    }
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}
