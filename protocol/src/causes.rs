//! Error texts for reports, conditions and logs: an error with its whole source chain on one
//! line, `outer: inner: root`, so that the reason a person needs is never cut off at the top.

use std::fmt;

/// Displays an error followed by each of its sources, joined by `": "`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `error` and its causes, joined by `": "`.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_source_follows_its_error_in_order() {
        let error = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(with_causes(&error), "outer: middle: root");
        assert_eq!(with_causes(&std::io::Error::other("alone")), "alone");
    }
}
