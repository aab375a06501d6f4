//! What a failed ClickHouse request means for whoever sent it: try again
//! later, the data itself is refused, or the setup is wrong. Retrying every
//! error for ever turns one poison row into a stopped pipeline; giving up on
//! a transient one loses data, so only errors known to be about the data are
//! [`Failure::Refused`], and an unknown error is transient.

/// The server's error codes (`ErrorCodes.cpp`).
mod code {
    pub const CANNOT_PARSE_TEXT: u32 = 6;
    pub const NO_SUCH_COLUMN_IN_TABLE: u32 = 16;
    pub const CANNOT_PARSE_INPUT_ASSERTION_FAILED: u32 = 27;
    pub const CANNOT_READ_ALL_DATA: u32 = 33;
    pub const CANNOT_PARSE_DATE: u32 = 38;
    pub const CANNOT_PARSE_DATETIME: u32 = 41;
    pub const UNKNOWN_IDENTIFIER: u32 = 47;
    pub const TYPE_MISMATCH: u32 = 53;
    pub const UNKNOWN_TABLE: u32 = 60;
    pub const SYNTAX_ERROR: u32 = 62;
    pub const ARGUMENT_OUT_OF_BOUND: u32 = 69;
    pub const CANNOT_CONVERT_TYPE: u32 = 70;
    pub const CANNOT_PARSE_NUMBER: u32 = 72;
    pub const UNKNOWN_DATABASE: u32 = 81;
    pub const INCORRECT_DATA: u32 = 117;
    pub const TOO_LARGE_STRING_SIZE: u32 = 131;
    pub const READONLY: u32 = 164;
    pub const UNKNOWN_USER: u32 = 192;
    pub const WRONG_PASSWORD: u32 = 193;
    pub const REQUIRED_PASSWORD: u32 = 194;
    /// "Too many parts" (merges behind: transient) and "Too many partitions
    /// for single INSERT block" (the batch's shape: refused) share it.
    pub const TOO_MANY_PARTS: u32 = 252;
    pub const FUNCTION_THROW_IF_VALUE_IS_NON_ZERO: u32 = 395;
    pub const VIOLATED_CONSTRAINT: u32 = 469;
    pub const ACCESS_DENIED: u32 = 497;
    pub const AUTHENTICATION_FAILED: u32 = 516;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection, timeout, overload, merges behind, a proxy's 5xx: the
    /// same request can succeed later.
    Transient,
    /// The server refused these rows (a value it cannot take, a
    /// materialized view's check, too many partitions in one block): the
    /// same rows will always fail; other rows will not.
    Refused,
    /// Unknown table or column, wrong credentials, a read-only user: no row
    /// can be written until an operator fixes it.
    Setup,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Transient => "transient",
            Failure::Refused => "refused",
            Failure::Setup => "setup",
        }
    }
}

pub fn classify(error: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error;
    match error {
        Error::BadResponse(message) => classify_response(message),
        // Our own rows failed to serialize: those rows' fault.
        Error::Custom(_)
        | Error::DataFormat(_)
        | Error::InvalidUtf8Encoding(_)
        | Error::SequenceMustHaveLength => Failure::Refused,
        Error::InvalidParams(_) | Error::Unsupported(_) | Error::SchemaMismatch(_) => {
            Failure::Setup
        }
        _ => Failure::Transient,
    }
}

/// The server's message: `Code: 252. DB::Exception: ...` (the HTTP
/// interface's text), or none when a proxy answered.
pub fn classify_response(message: &str) -> Failure {
    use code::*;
    let Some(code) = error_code(message) else {
        return Failure::Transient;
    };
    match code {
        TOO_MANY_PARTS if message.contains("partitions") => Failure::Refused,
        CANNOT_PARSE_TEXT
        | CANNOT_PARSE_INPUT_ASSERTION_FAILED
        | CANNOT_READ_ALL_DATA
        | CANNOT_PARSE_DATE
        | CANNOT_PARSE_DATETIME
        | TYPE_MISMATCH
        | ARGUMENT_OUT_OF_BOUND
        | CANNOT_CONVERT_TYPE
        | CANNOT_PARSE_NUMBER
        | INCORRECT_DATA
        | TOO_LARGE_STRING_SIZE
        | FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
        | VIOLATED_CONSTRAINT => Failure::Refused,
        NO_SUCH_COLUMN_IN_TABLE
        | UNKNOWN_IDENTIFIER
        | UNKNOWN_TABLE
        | SYNTAX_ERROR
        | UNKNOWN_DATABASE
        | READONLY
        | UNKNOWN_USER
        | WRONG_PASSWORD
        | REQUIRED_PASSWORD
        | ACCESS_DENIED
        | AUTHENTICATION_FAILED => Failure::Setup,
        _ => Failure::Transient,
    }
}

fn error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_classified_by_code_and_text() {
        let cases = [
            (
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).",
                Failure::Refused,
            ),
            (
                "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.",
                Failure::Transient,
            ),
            (
                "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero",
                Failure::Refused,
            ),
            (
                "Code: 60, e.displayText() = DB::Exception: Table hg.events doesn't exist.",
                Failure::Setup,
            ),
            (
                "Code: 516. DB::Exception: default: Authentication failed",
                Failure::Setup,
            ),
            (
                "Code: 241. DB::Exception: Memory limit (for query) exceeded",
                Failure::Transient,
            ),
            (
                "Code: 999999. DB::Exception: something new",
                Failure::Transient,
            ),
            ("502 Bad Gateway", Failure::Transient),
        ];
        for (message, want) in cases {
            assert_eq!(classify_response(message), want, "{message}");
        }
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Failure::Transient
        );
    }
}
