//! Errors with the exit code they map to (documented in `bidora --help`).

/// Exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The run itself failed.
    Runtime = 1,
    /// Bad flags or configuration.
    Usage = 2,
    /// Bad input files.
    Input = 3,
}

/// An error and its exit code.
#[derive(Debug)]
pub struct Fail {
    /// Exit code.
    pub code: Code,
    /// The error with its cause chain.
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Fail {
    fn from(error: anyhow::Error) -> Self {
        Fail {
            code: Code::Runtime,
            error,
        }
    }
}

/// Tags a result's error with an exit code.
pub trait Classify<T> {
    /// Exit code 2.
    fn usage(self) -> Result<T, Fail>;
    /// Exit code 3.
    fn input(self) -> Result<T, Fail>;
    /// Exit code 1.
    fn runtime(self) -> Result<T, Fail>;
}

impl<T, E: Into<anyhow::Error>> Classify<T> for Result<T, E> {
    fn usage(self) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            code: Code::Usage,
            error: e.into(),
        })
    }
    fn input(self) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            code: Code::Input,
            error: e.into(),
        })
    }
    fn runtime(self) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            code: Code::Runtime,
            error: e.into(),
        })
    }
}

/// A usage error from a message.
pub fn usage(msg: impl std::fmt::Display) -> Fail {
    Fail {
        code: Code::Usage,
        error: anyhow::anyhow!("{msg}"),
    }
}

/// An input error from a message.
pub fn input(msg: impl std::fmt::Display) -> Fail {
    Fail {
        code: Code::Input,
        error: anyhow::anyhow!("{msg}"),
    }
}
