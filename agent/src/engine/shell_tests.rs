use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::outcome::{StepStatus, codes};
use super::shell::*;

async fn run_in(
    dir: &std::path::Path,
    shell: &str,
    body: &str,
    success: &[i64],
) -> super::outcome::StepOutcome {
    let env = BTreeMap::from([("LogUploadAllow".to_string(), PathBuf::from("/var/log/app"))]);
    let step = ShellRun {
        shell,
        body,
        work_dir: dir,
        env: &env,
        timeout: Duration::from_secs(20),
        success_codes: success,
        group: None,
    };
    run(step, &CancellationToken::new()).await
}

#[tokio::test]
async fn bash_step_reports_exit_code_and_output_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = run_in(dir.path(), "bash", "echo hello; echo world >&2", &[]).await;
    assert_eq!((ok.status, ok.code.as_str()), (StepStatus::Success, "0"));
    assert!(
        ok.text.contains("hello") && ok.text.contains("world"),
        "{}",
        ok.text
    );

    let failed = run_in(dir.path(), "sh", "echo broken; exit 7", &[]).await;
    assert_eq!(
        (failed.status, failed.code.as_str()),
        (StepStatus::Failure, "7")
    );
    assert_eq!(failed.text, "broken");
}

#[tokio::test]
async fn silent_success_reports_the_standard_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = run_in(dir.path(), "bash", "true", &[]).await;
    assert_eq!(ok.text, "Operation Completed Successfully");
}

#[tokio::test]
async fn silent_failure_says_how_it_exited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failed = run_in(dir.path(), "bash", "exit 3", &[]).await;
    assert_eq!(failed.status, StepStatus::Failure);
    assert_eq!(failed.text, "exited with code 3 and printed nothing");
}

#[tokio::test]
async fn extra_success_codes_count_as_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_in(dir.path(), "bash", "exit 3010", &[0, 3010]).await;
    // Exit codes are taken modulo 256 by the kernel.
    assert_eq!(outcome.code, (3010 % 256).to_string());
    let outcome = run_in(dir.path(), "bash", "exit 194", &[194]).await;
    assert!(outcome.is_success());
    assert_eq!(outcome.code, "194");
}

#[tokio::test]
async fn f19_crlf_bash_step_is_refused_before_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let body = format!("#!/bin/bash\r\ntouch {}\r\necho ok\r\n", marker.display());
    let outcome = run_in(dir.path(), "bash", &body, &[]).await;
    assert_eq!(
        (outcome.status, outcome.code.as_str()),
        (StepStatus::Failure, codes::CRLF_IN_BASH)
    );
    assert!(!marker.exists(), "nothing may run");
}

#[tokio::test]
async fn missing_powershell_fails_with_a_clear_reason_and_leaves_no_script() {
    if find_in_path("pwsh").is_some() || find_in_path("powershell").is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["powershell", "pwsh"] {
        let outcome = run_in(dir.path(), shell, "Get-Item .", &[]).await;
        assert_eq!(outcome.status, StepStatus::Failure);
        assert_eq!(outcome.code, codes::SHELL_MISSING);
        assert_eq!(
            outcome.text,
            format!("shell \"{shell}\" is not installed on this device")
        );
    }
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
}

#[tokio::test]
async fn unknown_shell_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_in(dir.path(), "cmd.exe", "dir", &[]).await;
    assert_eq!(outcome.code, codes::UNKNOWN_SHELL);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = BTreeMap::new();
    let marker = dir.path().join("late");
    let body = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    let step = ShellRun {
        shell: "bash",
        body: &body,
        work_dir: dir.path(),
        env: &env,
        timeout: Duration::from_millis(300),
        success_codes: &[],
        group: None,
    };
    let outcome = run(step, &CancellationToken::new()).await;
    assert_eq!(outcome.code, codes::TIMEOUT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !marker.exists(),
        "background child must be killed with the group"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = BTreeMap::new();
    let cancel = CancellationToken::new();
    let step = ShellRun {
        shell: "bash",
        body: "sleep 30",
        work_dir: dir.path(),
        env: &env,
        timeout: Duration::from_secs(60),
        success_codes: &[],
        group: None,
    };
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let outcome = run(step, &cancel).await;
    assert_eq!(
        (outcome.status, outcome.code.as_str()),
        (StepStatus::Cancelled, codes::CANCELLED)
    );
}

#[tokio::test]
async fn zone_roots_are_exported_to_shell_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = run_in(dir.path(), "bash", "echo ${LogUploadAllow}/x.log", &[]).await;
    assert_eq!(outcome.text, "/var/log/app/x.log");
}

#[test]
fn f18_powershell_wrapper_is_exactly_this_script() {
    let body = "& ./tool.exe --flag\nWrite-Output \"done\"";
    assert_eq!(
        powershell_wrapper(body),
        "$ErrorActionPreference = 'Stop'\n\
         $PSNativeCommandUseErrorActionPreference = $false\n\
         trap { [Console]::Error.WriteLine($_); exit 1 }\n\
         $global:LASTEXITCODE = 0\n\
         & ./tool.exe --flag\n\
         Write-Output \"done\"\n\
         if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }\n\
         exit 0\n"
    );
    // A body ending in a comment cannot swallow the exit code check: it starts a new line.
    let commented = powershell_wrapper("Get-Item . # look");
    assert!(commented.contains("# look\nif ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }\n"));
}

#[test]
fn f18_powershell_runs_the_wrapper_from_a_bom_script_file_with_fixed_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = std::path::Path::new("/opt/microsoft/powershell/7/pwsh");
    let body = "Write-Output 'Grüße'; & ./tool.exe";
    let (command, script) = prepare(Shell::Pwsh, program, body, dir.path()).expect("prepare");
    let script = script.expect("a script file");
    let command = command.as_std();
    assert_eq!(command.get_program(), program.as_os_str());
    let args: Vec<&std::ffi::OsStr> = command.get_args().collect();
    let mut expected: Vec<&std::ffi::OsStr> =
        POWERSHELL_ARGS.iter().map(std::ffi::OsStr::new).collect();
    expected.push(script.path().as_os_str());
    assert_eq!(args, expected);
    assert_eq!(script.path().parent(), Some(dir.path()));
    assert!(script.path().extension().is_some_and(|e| e == "ps1"));
    let bytes = std::fs::read(script.path()).expect("script");
    let (bom, text) = bytes.split_at(UTF8_BOM.len());
    assert_eq!(bom, UTF8_BOM);
    assert_eq!(
        std::str::from_utf8(text).expect("utf-8"),
        powershell_wrapper(body)
    );
    let path = script.path().to_owned();
    drop(script);
    assert!(!path.exists(), "the script file goes with the step");

    let (bash, none) = prepare(
        Shell::Bash,
        std::path::Path::new("/bin/bash"),
        "exit 4",
        dir.path(),
    )
    .expect("prepare");
    assert!(none.is_none());
    let args: Vec<&std::ffi::OsStr> = bash.as_std().get_args().collect();
    assert_eq!(args, ["-c", "exit 4"]);
}

#[test]
fn powershell_is_looked_up_before_pwsh_and_pwsh_alone_for_pwsh() {
    assert_eq!(Shell::parse("PowerShell"), Some(Shell::PowerShell));
    assert_eq!(Shell::PowerShell.candidates(), ["powershell", "pwsh"]);
    assert_eq!(Shell::parse("pwsh"), Some(Shell::Pwsh));
    assert_eq!(Shell::Pwsh.candidates(), ["pwsh"]);
    assert!(!Shell::Pwsh.is_posix() && Shell::Sh.is_posix());
}

#[test]
fn output_tail_is_bounded_and_cut_on_characters() {
    let long = "ü".repeat(OUTPUT_TAIL_BYTES);
    let text = tail_text(long.as_bytes());
    assert!(text.len() <= OUTPUT_TAIL_BYTES);
    assert!(text.chars().all(|c| c == 'ü'));
}
