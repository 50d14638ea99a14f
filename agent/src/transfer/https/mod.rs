//! Downloads over HTTPS with range requests.
//!
//! A `singularDownload` goes over HTTPS when its `protocol` allows `https` and its `source` is
//! an `https://` URL. Bytes count as verified once they are written, synced and recorded:
//! TLS guards them in transit and the file's `sign` covers the whole file at the end. After
//! a dropped connection, a BUSY period or a kill, the download asks for
//! `Range: bytes={verified}-` with `If-Range` naming the file version (ETag or Last-Modified)
//! the verified bytes came from, so a file changed on the server starts again from zero.
//! `retransmissionRewind` does not apply: nothing verified is fetched twice.

mod wire;

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::signing::TrustStore;
use reqwest::header::{IF_RANGE, RANGE};
use reqwest::{Client, Response, StatusCode, Url};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub use self::wire::{Route, route};
use self::wire::{content_range, retryable, validator};
use super::finish::{Finish, cancelled, failed_io, finish, live, partial_path};
use super::progress::Partial;
use super::{DownloadJob, ProgressSink, record_path};
use crate::causes::with_causes;
use crate::config::{Config, ZoneAction};
use crate::engine::outcome::{StepOutcome, codes};
use crate::link::backoff::Backoff;
use crate::state::{Device, DeviceState};
use crate::zones::Zones;

/// Bytes gathered from the body before they are written, synced and recorded.
const FLUSH_BYTES: usize = 256 * 1024;

/// Failed requests in a row, with no byte gained between them, before the step fails: with
/// the backoff below, a network gone for about a minute still resumes.
const MAX_FAILURES: u32 = 8;

/// Why one request did not bring the rest of the file.
enum Failure {
    /// Try again from the verified length after a pause.
    Retry(String),
    /// The step ends with this outcome.
    End(StepOutcome),
}

/// The HTTPS download service.
#[derive(Debug)]
pub struct HttpsDownloads {
    config: Arc<Config>,
    zones: Arc<Zones>,
    device: Arc<Device>,
    trust: TrustStore,
    client: OnceCell<Client>,
}

impl HttpsDownloads {
    /// A service trusting `trust` for file signatures; its HTTPS client is built on first use.
    pub fn new(
        config: Arc<Config>,
        zones: Arc<Zones>,
        device: Arc<Device>,
        trust: TrustStore,
    ) -> Self {
        Self {
            config,
            zones,
            device,
            trust,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_try_init(|| async {
                let ca_file = self.config.transfer.https_ca_file.as_deref();
                let tls = crate::link::tls::client_config(ca_file, None)
                    .map_err(|error| with_causes(&error))?;
                Client::builder()
                    .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
                    .https_only(true)
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(Duration::from_secs(self.config.transfer.stall_secs.max(1)))
                    .build()
                    .map_err(|error| with_causes(&error))
            })
            .await
    }

    /// Runs the download of `url` until it succeeds, fails or is cancelled.
    pub async fn download(
        &self,
        url: Url,
        job: DownloadJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> StepOutcome {
        let client = match self.client().await {
            Ok(client) => client,
            Err(text) => {
                let text = format!("failed to set up HTTPS: {text}");
                return StepOutcome::failed(codes::IO_ERROR, text);
            }
        };
        let key = format!("{}|{}", job.recipe_id, job.step);
        let record = record_path(&self.config.state_dir, &key);
        let data = partial_path(&job.destination);
        let mut partial = match Partial::open(&record, &data, url.as_str()) {
            Ok(partial) => partial,
            Err(error) => return failed_io(error),
        };
        progress(live(&job, &partial));
        let max_attempts = self.config.transfer.max_attempts.max(1);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut failures = 0;
        loop {
            if partial
                .progress
                .total
                .is_some_and(|t| partial.progress.verified >= t)
            {
                match finish(&self.trust, max_attempts, &job, &mut partial) {
                    Finish::Done(outcome) => return outcome,
                    Finish::Again => {
                        if let Err(failure) = start_over(&mut partial) {
                            return failure;
                        }
                        progress(live(&job, &partial));
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return cancelled(),
                () = self.device.wait_not_busy() => {}
            }
            let before = partial.progress.verified;
            let request = Request {
                client,
                url: &url,
                job: &job,
                progress: &progress,
                cancel: &cancel,
            };
            let Err(failure) = self.fetch(request, &mut partial).await else {
                continue;
            };
            let why = match failure {
                Failure::End(outcome) if outcome.code == codes::CANCELLED => return outcome,
                Failure::End(outcome) => return abandon(&partial, outcome),
                Failure::Retry(why) => why,
            };
            if partial.progress.verified > before {
                failures = 0;
                backoff.reset();
            }
            failures += 1;
            tracing::warn!(url = %url, failures, reason = %why, "HTTPS download interrupted");
            if failures >= MAX_FAILURES {
                let text = format!("HTTPS download of {url} failed {failures} times: {why}");
                return abandon(&partial, StepOutcome::failed(codes::DOWNLOAD_FAILED, text));
            }
            tokio::select! {
                () = cancel.cancelled() => return cancelled(),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One GET from the verified length: writes what arrives until the body ends, the
    /// device goes BUSY, the step is cancelled or the connection fails.
    async fn fetch(&self, request: Request<'_>, partial: &mut Partial) -> Result<(), Failure> {
        let from = partial.progress.verified;
        let mut get = request
            .client
            .get(request.url.clone())
            .header(RANGE, format!("bytes={from}-"));
        if let Some(validator) = partial.progress.validator.as_ref().filter(|_| from > 0) {
            get = get.header(IF_RANGE, validator);
        }
        let response = tokio::select! {
            () = request.cancel.cancelled() => return Err(Failure::End(cancelled())),
            sent = get.send() => sent.map_err(|error| Failure::Retry(with_causes(&error)))?,
        };
        self.accept(&request, &response, partial)?;
        (request.progress)(live(request.job, partial));
        self.receive(&request, response, partial).await
    }

    /// Checks the answer's status and range, and records the file's size and version.
    fn accept(
        &self,
        request: &Request<'_>,
        response: &Response,
        partial: &mut Partial,
    ) -> Result<(), Failure> {
        let from = partial.progress.verified;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => match content_range(response.headers()) {
                // A size other than the one recorded means another file: start over.
                Some((start, total))
                    if start == from && partial.progress.total.is_none_or(|t| t == total) =>
                {
                    partial.progress.total = Some(total);
                }
                _ => {
                    start_over(partial).map_err(Failure::End)?;
                    let why = format!("the server answered another range than bytes={from}-");
                    return Err(Failure::Retry(why));
                }
            },
            StatusCode::OK => {
                // The whole file, as for a first request or a file that changed since.
                if from > 0 {
                    tracing::info!(url = %request.url, "file changed on the server; starting over");
                    start_over(partial).map_err(Failure::End)?;
                }
                partial.progress.total = response.content_length();
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                start_over(partial).map_err(Failure::End)?;
                let why = format!("the server refused bytes={from}-; starting over");
                return Err(Failure::Retry(why));
            }
            _ => {
                let why = format!("the server answered {status}");
                if retryable(status) {
                    return Err(Failure::Retry(why));
                }
                let text = format!("HTTPS download of {} failed: {why}", request.url);
                return Err(Failure::End(StepOutcome::failed(
                    codes::DOWNLOAD_FAILED,
                    text,
                )));
            }
        }
        // Known gap: a server sending neither ETag nor Last-Modified gets no If-Range, so a
        // resume cannot notice a changed file; the file's `sign` still refuses the result.
        if partial.progress.verified == 0 {
            partial.progress.validator = validator(response.headers());
        }
        if crate::mode::strict(&self.config)
            && let Some(total) = partial.progress.total
            && let Err(denial) =
                self.zones
                    .check(ZoneAction::Download, &request.job.destination, total)
        {
            let outcome = StepOutcome::failed(codes::ZONE_DENIED, denial.to_string());
            return Err(Failure::End(outcome));
        }
        partial
            .save()
            .map_err(|error| Failure::End(failed_io(error)))
    }

    /// Streams the body to the partial file.
    async fn receive(
        &self,
        request: &Request<'_>,
        mut response: Response,
        partial: &mut Partial,
    ) -> Result<(), Failure> {
        let mut states = self.device.subscribe();
        let mut buffer = Vec::with_capacity(FLUSH_BYTES);
        loop {
            let chunk = tokio::select! {
                () = request.cancel.cancelled() => {
                    flush(partial, &mut buffer)?;
                    return Err(Failure::End(cancelled()));
                }
                changed = states.changed() => {
                    if changed.is_ok() && *states.borrow_and_update() == DeviceState::Busy {
                        flush(partial, &mut buffer)?;
                        tracing::info!(url = %request.url, "HTTPS download paused while busy");
                        return Ok(());
                    }
                    continue;
                }
                chunk = response.chunk() => chunk,
            };
            let bytes = match chunk {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(error) => {
                    flush(partial, &mut buffer)?;
                    return Err(Failure::Retry(with_causes(&error)));
                }
            };
            let end = partial.written() + (buffer.len() + bytes.len()) as u64;
            if let Some(total) = partial.progress.total.filter(|total| end > *total) {
                start_over(partial).map_err(Failure::End)?;
                let why = format!("the server sent more than the {total} bytes it announced");
                return Err(Failure::Retry(why));
            }
            buffer.extend_from_slice(&bytes);
            if buffer.len() >= FLUSH_BYTES {
                flush(partial, &mut buffer)?;
                (request.progress)(live(request.job, partial));
            }
        }
        flush(partial, &mut buffer)?;
        let verified = partial.progress.verified;
        match partial.progress.total {
            Some(total) if verified < total => {
                let why = format!("the body ended at byte {verified} of {total}");
                return Err(Failure::Retry(why));
            }
            Some(_) => {}
            None => {
                // No announced size: the end of the body is the end of the file.
                partial.progress.total = Some(verified);
                partial
                    .save()
                    .map_err(|error| Failure::End(failed_io(error)))?;
            }
        }
        (request.progress)(live(request.job, partial));
        Ok(())
    }
}

/// What one request needs besides the partial file.
struct Request<'a> {
    client: &'a Client,
    url: &'a Url,
    job: &'a DownloadJob,
    progress: &'a ProgressSink,
    cancel: &'a CancellationToken,
}

/// Writes and syncs the gathered bytes, then records them as verified.
fn flush(partial: &mut Partial, buffer: &mut Vec<u8>) -> Result<(), Failure> {
    if buffer.is_empty() {
        return Ok(());
    }
    let end = partial.written();
    partial
        .write_chunk(end, buffer)
        .and_then(|()| partial.verify_to(partial.written()))
        .map_err(|error| Failure::End(failed_io(error)))?;
    buffer.clear();
    Ok(())
}

/// Ends the step with `outcome`, dropping the partial file and its record: the recipe that
/// asked for them is over, and a newer one starts its own.
fn abandon(partial: &Partial, outcome: StepOutcome) -> StepOutcome {
    let _ = std::fs::remove_file(partial.data_path());
    partial.discard_record();
    outcome
}

/// Empties the partial file and forgets the file's size and version.
fn start_over(partial: &mut Partial) -> Result<(), StepOutcome> {
    partial.progress.total = None;
    partial.progress.validator = None;
    partial.restart().map_err(failed_io)
}
