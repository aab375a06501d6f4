//! Lines for standard output. `println!` panics once the reader has gone
//! (`hourglass reconcile | head`, `hourglass stack status | head -3`); these
//! drop what nobody reads instead, and the command finishes its work (a
//! `stack down` piped into `head -1` still stops every server).

use std::io::{ErrorKind, Write};

/// `println!`, except that a closed pipe drops the line.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

pub fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}
