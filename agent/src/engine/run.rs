//! One recipe run: every step in order, each result journaled before it is reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::recipe::{
    DownloadStep, Plan, ShellStep, Stage, Step, StepError, UploadStep,
};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::journal::RecipeStatus;
use super::outcome::{StepOutcome, codes};
use super::report::LiveStep;
use super::shell::{self, ShellRun, StepGroup};
use crate::config::ZoneAction;
use crate::state::{Command, DeviceState, PackageKind};
use crate::transfer::DownloadJob;
use crate::zones;

/// Runs `plan` from its first unfinished step; returns when it ended or was cancelled.
pub async fn run_recipe(shared: Arc<Shared>, plan: Arc<Plan>, cancel: CancellationToken) {
    let finished = {
        let journal = shared.journal.lock().await;
        journal
            .current()
            .map(|r| r.steps.clone())
            .unwrap_or_default()
    };
    // Before any step runs again, end what a killed agent left running (one note a step).
    let grace = Duration::from_secs(shared.config.shell.stop_grace_secs);
    let mut leftovers: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for leftover in shared.groups.end_leftovers(grace).await {
        if leftover.recipe == plan.id {
            let step = leftover
                .step
                .split('#')
                .next()
                .unwrap_or_default()
                .to_owned();
            let survived = leftover.survived || leftovers.get(&step).is_some_and(|l| l.1);
            leftovers.insert(step, (leftover.text, survived));
        }
    }
    let mut status = RecipeStatus::Success;
    let mut stage_seen = None;
    for planned in plan.steps() {
        let (path, section, stage) = (planned.path(), planned.section, planned.stage);
        if let Some(outcome) = finished.get(&path) {
            if outcome.is_success() {
                continue;
            }
            status = RecipeStatus::Failure;
            break;
        }
        shared.device.wait_not_busy().await;
        if cancel.is_cancelled() {
            return;
        }
        if stage_seen != Some((section, stage)) {
            enter_stage(&shared, section, stage, stage_seen.map(|(_, s)| s));
            stage_seen = Some((section, stage));
        }
        shared
            .set_live(Some(LiveStep {
                path: path.clone(),
                ..LiveStep::default()
            }))
            .await;
        tracing::info!(recipe = %plan.id, step = %path, "step started");
        let outcome = match leftovers.remove(&path) {
            // Never a second run beside processes of the first that cannot be stopped.
            Some((note, true)) => StepOutcome::failed(
                codes::STILL_RUNNING,
                format!("{note}; the step is not run again beside it"),
            ),
            Some((note, false)) => {
                let mut outcome = execute(&shared, &plan.id, &path, planned.step, &cancel).await;
                outcome.text = format!("{note}; {}", outcome.text);
                outcome
            }
            None => execute(&shared, &plan.id, &path, planned.step, &cancel).await,
        };
        if shared.groups.stopping() {
            // The agent stops: nothing is journaled, the next start runs the step again.
            return;
        }
        if cancel.is_cancelled() && !outcome.is_success() {
            // Superseded or cancelled: the new owner of the journal reports.
            return;
        }
        tracing::info!(step = %path, code = %outcome.code, ok = outcome.is_success(), "step ended");
        let ok = outcome.is_success();
        if let Err(error) = shared.journal.lock().await.record_step(&path, outcome) {
            tracing::error!(%error, "failed to journal a step; stopping the recipe");
            return;
        }
        shared.set_live(None).await;
        if !ok {
            status = RecipeStatus::Failure;
            break;
        }
    }
    if let Err(error) = shared.journal.lock().await.finish(status, None) {
        tracing::error!(%error, "failed to journal the end of a recipe");
    }
    shared.publish().await;
    shared.device.try_apply(Command::Finish);
    tracing::info!(recipe = %plan.id, ?status, "recipe ended");
}

fn package_kind(section: &str) -> PackageKind {
    if section == "patch" {
        PackageKind::Patch
    } else {
        PackageKind::Update
    }
}

fn enter_stage(shared: &Shared, section: &str, stage: Stage, previous: Option<Stage>) {
    let kind = package_kind(section);
    if previous == Some(Stage::TransitPackage) {
        shared.device.try_apply(Command::TransitDone);
    }
    let command = match stage {
        Stage::PreTransitConfig => Command::StartAction,
        Stage::TransitPackage => Command::StartTransit(kind),
        _ => Command::StartApply(kind),
    };
    if shared.device.state() == DeviceState::Ready || previous.is_some() {
        shared.device.try_apply(command);
    }
}

async fn execute(
    shared: &Arc<Shared>,
    recipe_id: &str,
    path: &str,
    step: &Result<Step, StepError>,
    cancel: &CancellationToken,
) -> StepOutcome {
    if crate::mode::communication_only(&shared.config) {
        let text = "the device is in communication-only mode; no recipe step runs";
        return StepOutcome::failed(codes::COMMUNICATION_ONLY, text);
    }
    match step {
        Ok(Step::Shell(step)) => run_shell(shared, recipe_id, path, step, cancel).await,
        Ok(Step::Download(step)) => download(shared, recipe_id, path, step, cancel).await,
        Ok(Step::PeriodicUpload(step)) => upload(shared, recipe_id, path, step).await,
        Err(reason) => StepOutcome::failed(codes::UNKNOWN_ACTION, reason.to_string()),
    }
}

async fn run_shell(
    shared: &Shared,
    recipe_id: &str,
    path: &str,
    step: &ShellStep,
    cancel: &CancellationToken,
) -> StepOutcome {
    if crate::mode::strict(&shared.config) {
        return StepOutcome::failed(
            codes::STRICT_MODE,
            "shell actions are forbidden in strict mode",
        );
    }
    let work_dir = shared.config.work_dir();
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        return StepOutcome::failed(codes::IO_ERROR, format!("failed to create work dir: {e}"));
    }
    let timeout = Duration::from_secs(
        step.timeout_secs
            .unwrap_or(shared.config.shell.timeout_secs),
    );
    let env = shared.zones.roots().clone();
    let main = shell::run(
        ShellRun {
            shell: &step.shell,
            body: &step.command,
            work_dir: &work_dir,
            env: &env,
            timeout,
            success_codes: &step.success_codes,
            group: Some(StepGroup {
                groups: &shared.groups,
                recipe: recipe_id,
                step: path,
            }),
        },
        cancel,
    );
    tokio::pin!(main);

    // onPause and onResume run beside the step when the device goes BUSY and READY.
    let mut states = shared.device.subscribe();
    let mut paused = false;
    loop {
        tokio::select! {
            outcome = &mut main => return outcome,
            changed = states.changed() => {
                if changed.is_err() {
                    return main.await;
                }
                let busy = *states.borrow_and_update() == DeviceState::Busy;
                let hook = match (busy, paused) {
                    (true, false) => step.on_pause.as_deref(),
                    (false, true) => step.on_resume.as_deref(),
                    _ => None,
                };
                paused = busy;
                if let Some(body) = hook {
                    let hook_step = format!("{path}#{}", if busy { "onPause" } else { "onResume" });
                    let hook_run = ShellRun {
                        shell: &step.shell,
                        body,
                        work_dir: &work_dir,
                        env: &env,
                        timeout: Duration::from_secs(300),
                        success_codes: &[],
                        group: Some(StepGroup {
                            groups: &shared.groups,
                            recipe: recipe_id,
                            step: &hook_step,
                        }),
                    };
                    let result = shell::run(hook_run, cancel).await;
                    tracing::info!(busy, code = %result.code, "pause hook ran");
                }
            }
        }
    }
}

async fn download(
    shared: &Arc<Shared>,
    recipe_id: &str,
    path: &str,
    step: &DownloadStep,
    cancel: &CancellationToken,
) -> StepOutcome {
    let destination = match zones::resolve(
        &step.destination,
        &shared.config.work_dir(),
        shared.zones.roots(),
    ) {
        Ok(p) => p,
        Err(e) => return StepOutcome::failed(codes::BAD_PATH, e.to_string()),
    };
    // The size is not known yet: HTTPS checks it once the server announces it; a download
    // through the hub is checked by path only (known gap, listed in the README).
    if crate::mode::strict(&shared.config)
        && let Err(denial) = shared.zones.check(ZoneAction::Download, &destination, 0)
    {
        return StepOutcome::failed(codes::ZONE_DENIED, denial.to_string());
    }
    // F12: a file nobody signed cannot be checked, so it never counts as a success while
    // signatures are required.
    if step.sign.is_none()
        && shared.config.require_signatures
        && !shared.config.transfer.allow_unsigned_downloads
    {
        let text = "the download has no sign and this device requires signed files \
                    (transfer.allow_unsigned_downloads is off); nothing was downloaded";
        return StepOutcome::failed(codes::UNSIGNED_DOWNLOAD, text);
    }
    let Some(transfers) = shared.transfers.clone() else {
        return StepOutcome::failed(codes::IO_ERROR, "no hub link to download over");
    };
    let job = DownloadJob {
        step: path.to_owned(),
        recipe_id: recipe_id.to_owned(),
        source: step.source.clone(),
        destination,
        sign: step.sign.clone(),
        rewind: step.rewind,
        protocol: step.protocol.clone(),
    };
    let sink_shared = Arc::clone(shared);
    let progress: crate::transfer::ProgressSink = Arc::new(move |live: LiveStep| {
        let shared = Arc::clone(&sink_shared);
        tokio::spawn(async move { shared.set_live(Some(live)).await });
    });
    transfers.download(job, progress, cancel.clone()).await
}

/// Starts (or restarts) a periodic upload.
pub(super) async fn upload(
    shared: &Shared,
    recipe_id: &str,
    path: &str,
    step: &UploadStep,
) -> StepOutcome {
    if !step.enabled {
        return StepOutcome::succeeded("Done", "upload disabled by the recipe");
    }
    let pattern = match zones::resolve(
        &step.filename,
        &shared.config.work_dir(),
        shared.zones.roots(),
    ) {
        Ok(p) => p,
        Err(e) => return StepOutcome::failed(codes::BAD_PATH, e.to_string()),
    };
    if crate::mode::strict(&shared.config)
        && let Some(denied) = denied_uploads(&shared.zones, &pattern)
    {
        return StepOutcome::failed(codes::ZONE_DENIED, denied);
    }
    let Some(transfers) = shared.transfers.clone() else {
        return StepOutcome::failed(codes::IO_ERROR, "no hub link to upload over");
    };
    let key = format!("{recipe_id}|{path}");
    transfers
        .start_periodic_upload(key, pattern, step.interval_secs)
        .await
}

/// The files matching `pattern` that the zones deny, each with the zone's reject text
/// (`/var/log/app/x.log: Denied by local a restriction "LogDeny"`); `None` when none is.
/// A step naming a denied file fails and uploads nothing; a file that appears later and is
/// denied is reported in `lastUploadDenial` by the uploader.
fn denied_uploads(zones: &zones::Zones, pattern: &std::path::Path) -> Option<String> {
    let denied: Vec<String> = crate::transfer::upload::matching_files(pattern)
        .into_iter()
        .filter_map(|file| {
            let size = std::fs::metadata(&file).map_or(0, |m| m.len());
            let denial = zones.check(ZoneAction::Upload, &file, size).err()?;
            Some(format!("{}: {denial}", file.display()))
        })
        .collect();
    (!denied.is_empty()).then(|| denied.join("; "))
}
