//! The CRD YAML committed in the chart is exactly what the Rust types generate.

use std::collections::BTreeSet;
use std::path::PathBuf;

const REGENERATE: &str = "run `cargo run -p cloudpillar -- crds --out charts/cloudpillar/crds` \
                          and commit the result";

fn chart_crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/cloudpillar/crds")
}

/// The first line where `committed` and `generated` differ, for the failure message.
fn first_difference(committed: &str, generated: &str) -> String {
    let mut committed_lines = committed.lines();
    let mut generated_lines = generated.lines();
    for number in 1.. {
        match (committed_lines.next(), generated_lines.next()) {
            (None, None) => break,
            (left, right) if left == right => continue,
            (left, right) => {
                return format!(
                    "line {number}:\n  committed: {}\n  generated: {}",
                    left.unwrap_or("<end of file>"),
                    right.unwrap_or("<end of file>")
                );
            }
        }
    }
    "the files differ only in line endings".into()
}

#[test]
fn committed_crd_yaml_matches_the_generated_yaml() {
    let dir = chart_crds_dir();
    let rendered = cloudpillar_crds::rendered().expect("CRDs render");

    for (file, generated) in &rendered {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); {REGENERATE}", path.display()));
        assert!(
            committed == *generated,
            "{} is out of date with the Rust types at {}; {REGENERATE}",
            path.display(),
            first_difference(&committed, generated)
        );
    }

    let expected: BTreeSet<String> = rendered.into_iter().map(|(file, _)| file).collect();
    let stray: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}; {REGENERATE}", dir.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml") && !expected.contains(name))
        .collect();
    assert!(
        stray.is_empty(),
        "CRD files no type generates: {stray:?}; delete them and {REGENERATE}"
    );
}
