use std::path::Path;

use super::*;

const SAMPLE: &str = r#"
device_id = "dev-1"
state_dir = "/var/lib/cloudpillar-agent"
trusted_keys = ["/etc/cloudpillar/recipe-signer.pem"]

[hub]
host = "hub.local"
port = 8883

[auth]
kind = "sas"
key_file = "/etc/cloudpillar/device.key"

[zones.LogUploadAllow]
action = "upload"
root = "/var/log/app"
patterns = ["*.log"]
max_size = 1048576
"#;

fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse_with_env(text, Path::new("agent.toml"), &vars)
}

#[test]
fn sample_config_parses_with_secure_defaults() {
    let config = parse(SAMPLE, &[]).expect("sample parses");
    assert!(config.require_signatures);
    assert!(!config.strict_mode);
    assert_eq!(config.api.bind, "127.0.0.1:7070".parse().expect("addr"));
    assert_eq!(
        config.work_dir(),
        Path::new("/var/lib/cloudpillar-agent/work")
    );
    let zone = &config.zones["LogUploadAllow"];
    assert_eq!(zone.action, ZoneAction::Upload);
    assert_eq!(zone.kind, ZoneKind::Allow);
    assert_eq!(config.transfer.max_attempts, 3);
}

#[test]
fn env_overrides_replace_file_values_with_types() {
    let config = parse(
        SAMPLE,
        &[
            ("CP_AGENT_HUB__HOST", "other.local"),
            ("CP_AGENT_HUB__PORT", "18883"),
            ("CP_AGENT_STRICT_MODE", "true"),
            ("CP_AGENT_DEVICE_ID", "\"42\""),
            ("UNRELATED", "x"),
            ("CP_AGENT_LOG", "debug"),
            ("CP_AGENT_CONFIG", "/etc/cloudpillar/agent.toml"),
        ],
    )
    .expect("overrides apply");
    let hub = config.hub.expect("hub");
    assert_eq!(hub.host, "other.local");
    assert_eq!(hub.port, 18883);
    assert!(config.strict_mode);
    assert_eq!(config.device_id.as_deref(), Some("42"));
}

#[test]
fn unknown_keys_are_refused_in_file_and_env() {
    let err = parse(&format!("{SAMPLE}\nsurprise = 1\n"), &[]).expect_err("unknown key");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    let err = parse(SAMPLE, &[("CP_AGENT_HUB__COLOUR", "red")]).expect_err("unknown env key");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn non_loopback_api_bind_is_refused_with_clear_error() {
    let err = parse(SAMPLE, &[("CP_AGENT_API__BIND", "0.0.0.0:7070")]).expect_err("refused");
    assert!(matches!(err, ConfigError::NonLoopbackBind { .. }));
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    parse(SAMPLE, &[("CP_AGENT_API__BIND", "[::1]:7070")]).expect("ipv6 loopback is fine");
}

#[test]
fn signatures_required_without_trusted_keys_is_refused() {
    let text = SAMPLE.replace(
        "trusted_keys = [\"/etc/cloudpillar/recipe-signer.pem\"]",
        "",
    );
    let err = parse(&text, &[]).expect_err("no keys");
    assert!(err.to_string().contains("trusted_keys"), "{err}");
    parse(&text, &[("CP_AGENT_REQUIRE_SIGNATURES", "false")]).expect("optional by local config");
}

#[test]
fn x509_auth_and_group_dps_parse() {
    let text = r#"
state_dir = "/s"
require_signatures = false
[auth]
kind = "x509"
cert_file = "/c.pem"
key_file = "/k.pem"
[dps]
host = "dps.local"
id_scope = "0ne00000001"
registration_id = "dev-9"
key_file = "/g.key"
group = true
"#;
    let config = parse(text, &[]).expect("parses");
    assert!(matches!(config.auth, Some(AuthConfig::X509 { .. })));
    assert!(config.dps.expect("dps").group);
}

#[test]
fn bad_zone_names_are_refused() {
    let text = SAMPLE.replace("zones.LogUploadAllow", "zones.\"bad name\"");
    assert!(parse(&text, &[]).is_err());
    let text = SAMPLE.replace("zones.LogUploadAllow", "zones.1Log");
    assert!(
        parse(&text, &[]).is_err(),
        "a zone name must work as ${{Name}}"
    );
}

#[test]
fn key_files_open_to_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.key");
    std::fs::write(&path, "c2VjcmV0\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = read_secret_file(&path).expect_err("too open");
    assert!(matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(read_secret_file(&path).expect("0600 is fine"), "c2VjcmV0");
}

#[test]
fn empty_key_files_are_refused_with_their_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [("api-secret", ""), ("device.key", " \r\n\t\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = read_secret_file(&path).expect_err("empty");
        assert!(matches!(err, KeyFileError::Empty { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("key file {} is empty", path.display())
        );
    }
}

#[test]
fn tpm_section_takes_defaults_and_environment_overrides() {
    let text = format!("{SAMPLE}\n[tpm]\n");
    let config = parse(
        &text,
        &[("CP_AGENT_TPM__TCTI", "swtpm:host=127.0.0.1,port=2321")],
    );
    match config {
        Ok(config) if cfg!(feature = "tpm") => {
            let tpm = config.tpm.expect("tpm section");
            assert_eq!(tpm.tcti, "swtpm:host=127.0.0.1,port=2321");
            assert_eq!(tpm.handle, 0x8100_0C01);
        }
        Err(ConfigError::Invalid(reason)) if !cfg!(feature = "tpm") => {
            assert!(reason.contains("without the tpm feature"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let env = [("CP_AGENT_TPM__HANDLE", "0x81000100")];
    let overridden = parse(SAMPLE, &env);
    if cfg!(feature = "tpm") {
        let tpm = overridden.expect("parses").tpm.expect("tpm section");
        assert_eq!(
            (tpm.handle, tpm.tcti.as_str()),
            (0x8100_0100, "device:/dev/tpmrm0")
        );
    }
}

#[cfg(feature = "tpm")]
#[test]
fn tpm_handle_outside_the_owner_persistent_range_is_refused() {
    let text = format!("{SAMPLE}\n[tpm]\nhandle = 0x01000001\n");
    let err = parse(&text, &[]).expect_err("NV index is not a key handle");
    assert!(err.to_string().contains("0x01000001"), "{err}");
}

#[test]
fn an_empty_device_id_is_refused_at_start() {
    let err = parse(SAMPLE, &[("CP_AGENT_DEVICE_ID", "")]).expect_err("refused");
    assert!(err.to_string().contains("device_id is empty"), "{err}");
}

#[test]
fn a_work_dir_holding_the_state_dir_is_refused() {
    for work_dir in [
        "/var/lib/cloudpillar-agent",
        "/var/lib/cloudpillar-agent/",
        "/var/lib",
        "/",
    ] {
        // `work_dir` is a top-level key: it goes before the first table.
        let text = SAMPLE.replacen("[hub]", &format!("work_dir = {work_dir:?}\n[hub]"), 1);
        let err = parse(&text, &[]).expect_err(work_dir);
        assert!(
            err.to_string().contains("holds state_dir"),
            "{work_dir}: {err}"
        );
    }
    let beside = SAMPLE.replacen("[hub]", "work_dir = \"/srv/recipes\"\n[hub]", 1);
    assert!(parse(&beside, &[]).is_ok());
    let inside = SAMPLE.replacen(
        "[hub]",
        "work_dir = \"/var/lib/cloudpillar-agent/work2\"\n[hub]",
        1,
    );
    assert!(parse(&inside, &[]).is_ok());
}
