//! `CP_AGENT_*` environment overrides applied to the parsed TOML table.
//!
//! `CP_AGENT_HUB__HOST=h` sets `hub.host`. A value that is a valid TOML literal
//! (`8883`, `true`, `["a", "b"]`, `"quoted"`) keeps its type; anything else is a string.
//! Quote a value to force a string (`CP_AGENT_DEVICE_ID='"123"'`).

use super::ConfigError;

/// Prefix of every override variable.
pub const PREFIX: &str = "CP_AGENT_";

/// Variables with the prefix that are not configuration keys: the config file path, the log
/// filter and a test hook of shell steps (see `engine::shell::PAUSE_AFTER_SPAWN_ENV`).
pub const RESERVED: [&str; 3] = [
    "CP_AGENT_CONFIG",
    "CP_AGENT_LOG",
    "CP_AGENT_TEST_PAUSE_AFTER_SPAWN_MS",
];

/// Applies every `CP_AGENT_*` variable in `vars` to `table`.
pub fn apply_overrides(
    table: &mut toml::Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Override {
                name: name.clone(),
                reason: "empty key".into(),
            });
        }
        set_path(table, &path, literal(raw)).map_err(|reason| ConfigError::Override {
            name: name.clone(),
            reason,
        })?;
    }
    Ok(())
}

fn literal(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cursor = table;
    for key in parents {
        let entry = cursor
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a table"))?;
    }
    cursor.insert(last.clone(), value);
    Ok(())
}
