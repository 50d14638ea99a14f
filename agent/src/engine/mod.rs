//! The recipe engine: sections, stages and steps in order, each result persisted.

pub mod outcome;
pub mod shell;
#[cfg(test)]
mod shell_tests;
