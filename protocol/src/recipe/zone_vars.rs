//! Zone variables in recipe paths: `${LogUploadAllow}/app/x.log`.
//!
//! A name starts with a letter or `_` and goes on with letters, digits or `_`. The operator
//! checks the syntax before signing; the device replaces each variable with its zone's root.

/// A `${` in a recipe string that does not form a zone variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneSyntaxError {
    /// No `}` closes the variable.
    #[error("unclosed zone variable at byte {offset}")]
    Unclosed {
        /// Byte offset of the `${`.
        offset: usize,
    },
    /// The text between the braces is not a zone name.
    #[error("zone variable name is not valid at byte {offset}")]
    BadName {
        /// Byte offset of the `${`.
        offset: usize,
    },
}

/// A zone variable could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneExpandError {
    /// A `${` does not form a zone variable.
    #[error(transparent)]
    Syntax(#[from] ZoneSyntaxError),
    /// The variable names no zone known here.
    #[error("unknown zone variable {name:?}")]
    UnknownZone {
        /// The name between the braces.
        name: String,
    },
}

/// Whether `name` can name a zone in a `${Name}` variable.
pub fn is_zone_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Zone variables in `text` with the byte offsets of their `${`. Refuses a `${` that does
/// not form one.
pub fn zone_variables(text: &str) -> Result<Vec<(usize, &str)>, ZoneSyntaxError> {
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(relative) = text[rest..].find("${") {
        let offset = rest + relative;
        let body = &text[offset + 2..];
        let end = body.find('}').ok_or(ZoneSyntaxError::Unclosed { offset })?;
        let name = &body[..end];
        if !is_zone_name(name) {
            return Err(ZoneSyntaxError::BadName { offset });
        }
        found.push((offset, name));
        rest = offset + 2 + end + 1;
    }
    Ok(found)
}

/// `text` with every zone variable replaced by `root(name)`; a name `root` does not know
/// is refused.
pub fn expand_zone_variables(
    text: &str,
    mut root: impl FnMut(&str) -> Option<String>,
) -> Result<String, ZoneExpandError> {
    let mut expanded = String::with_capacity(text.len());
    let mut copied = 0;
    for (offset, name) in zone_variables(text)? {
        let value = root(name).ok_or_else(|| ZoneExpandError::UnknownZone {
            name: name.to_owned(),
        })?;
        expanded.push_str(&text[copied..offset]);
        expanded.push_str(&value);
        copied = offset + name.len() + 3;
    }
    expanded.push_str(&text[copied..]);
    Ok(expanded)
}
