//! The packaged sample configuration stays valid.

#[test]
fn packaged_sample_config_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/agent.toml");
    let text = std::fs::read_to_string(&path).expect("sample");
    let config = super::Config::parse_with_env(&text, &path, &[]).expect("sample parses");
    assert!(config.require_signatures);
    assert_eq!(config.zones.len(), 2);
}
