//! Running helm, kubectl and hadolint for the chart tests, and reading their output.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail, ensure};
use tokio::io::AsyncWriteExt;

/// Release name of every render.
pub const RELEASE: &str = "cp";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/cloudpillar")
}

/// `NAME-VERSION` in the cache `k3s-dev/build-tools` fills (`CP_CACHE` or the XDG cache).
pub fn cached_tool(name: &str, version_var: &str, version: &str) -> PathBuf {
    let cache = std::env::var_os("CP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME").map_or_else(
                || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
                PathBuf::from,
            );
            base.join("cloudpillar")
        });
    let version = std::env::var(version_var).unwrap_or_else(|_| version.to_owned());
    let path = cache.join("bin").join(format!("{name}-{version}"));
    assert!(
        path.is_file(),
        "{name} {version} is missing at {}: build it with `k3s-dev/build-tools {name}`",
        path.display()
    );
    path
}

pub fn helm() -> PathBuf {
    cached_tool("helm", "CP_HELM_VERSION", "v3.21.4")
}

/// What a finished command printed.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` in `dir` with `stdin` piped in.
pub async fn run(program: &Path, args: &[&str], dir: &Path, stdin: &str) -> anyhow::Result<Ran> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut input = child.stdin.take().context("stdin is piped")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let output = child.wait_with_output().await?;
    Ok(Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `kubectl ARGS` against `KUBECONFIG` with `stdin` as the manifest.
pub async fn kubectl(args: &[&str], stdin: &str) -> anyhow::Result<Ran> {
    run(Path::new("kubectl"), args, &repo(), stdin).await
}

/// `helm template` of the chart into `namespace`; fails with helm's message.
pub async fn render(namespace: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["template", RELEASE, ".", "--namespace", namespace];
    all.extend_from_slice(args);
    let ran = run(&helm(), &all, &chart_dir(), "").await?;
    ensure!(ran.success, "helm {all:?} failed:\n{}", ran.stderr);
    Ok(ran.stdout)
}

/// The YAML documents of a rendered manifest that hold an object.
pub fn documents(rendered: &str) -> Vec<String> {
    rendered
        .split("\n---")
        .filter(|doc| doc.lines().any(|line| line.starts_with("kind: ")))
        .map(|doc| doc.trim_start_matches("---").trim().to_owned())
        .collect()
}

/// Names of the Pod Security checks in kubectl's "would violate PodSecurity" warnings.
pub fn pod_security_violations(stderr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in stderr
        .lines()
        .filter(|l| l.contains("would violate PodSecurity"))
    {
        let list = line.split_once("\": ").map_or("", |(_, rest)| rest);
        let (mut depth, mut current) = (0, String::new());
        for c in list.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => names.push(std::mem::take(&mut current).trim().to_owned()),
                _ if depth == 0 => current.push(c),
                _ => {}
            }
        }
        names.push(current.trim().to_owned());
    }
    names
}

/// `Ok` when `result` is the API server's 403 Forbidden.
pub fn forbidden<T: Debug>(result: Result<T, kube::Error>, what: &str) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        other => bail!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}
