//! The recipe engine: sections, stages and steps in order, each result persisted.

pub mod journal;
pub mod outcome;
pub mod recipe;
#[cfg(test)]
mod recipe_tests;
pub mod report;
pub mod shell;
#[cfg(test)]
mod shell_tests;
