//! Twin change events read from the edge hub's long-poll stream `GET /events`, the way to
//! events when no Event Hubs-compatible endpoint is configured (see `eventhub`).

use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use serde::Deserialize;
use serde_json::Value;

use super::azure::{API_VERSION, AzureTwinService};
use super::{Checkpoint, EventPositions, TwinError, TwinEvent, TwinEventKind};

/// Events asked for per read.
const PAGE: usize = 500;
/// How far before its start instant a subscription without a position begins: events are
/// stamped as they are created and committed a moment later, so a few can carry an earlier
/// time than one committed before them. Reading one twice only costs a reconcile.
const REPLAY_MARGIN_MS: u64 = 2_000;
/// Seconds a read waits for new events before answering empty.
const WAIT_SECS: u64 = 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    events: Vec<WireEvent>,
    next_sequence_number: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent {
    sequence_number: u64,
    #[serde(default)]
    enqueued_ms: u64,
    device_id: String,
    source: String,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

impl WireEvent {
    fn into_event(self) -> TwinEvent {
        let op = self.properties.get("opType").map(String::as_str);
        let kind = TwinEventKind::of(&self.source, op);
        TwinEvent {
            sequence: self.sequence_number,
            partition: None,
            device_id: self.device_id,
            kind,
            body: self.body,
        }
    }
}

/// State of one subscription: a client and the next sequence number to read.
struct Reader {
    http: reqwest::Client,
    base_url: String,
    service: TokenSource,
    next: Option<u64>,
    /// Without a position: start at the first event enqueued at this instant or later.
    since_ms: Option<u64>,
    failed: bool,
}

/// Makes SAS tokens without holding the whole service in the stream.
struct TokenSource {
    connection: super::HubConnection,
}

impl TokenSource {
    fn token(&self) -> Result<String, TwinError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        super::azure::fresh_token(&self.connection, now).map(|(token, _)| token)
    }
}

pub(super) fn subscribe(
    service: &AzureTwinService,
    from: Checkpoint,
) -> BoxStream<'static, Result<TwinEvent, TwinError>> {
    if !service.connection.event_stream {
        let error = TwinError::EventsUnsupported {
            host: service.connection.service_host.clone(),
        };
        return stream::once(async move { Err(error) }).boxed();
    }
    let reader = Reader {
        http: service.http.clone(),
        base_url: service.base_url(),
        service: TokenSource {
            connection: service.connection.clone(),
        },
        next: match &from {
            Checkpoint::Latest => None,
            Checkpoint::Sequence(n) => Some((*n).max(1)),
            Checkpoint::Positions(p) => p.next.get(EventPositions::WHOLE_LOG).map(|n| (*n).max(1)),
        },
        since_ms: match &from {
            Checkpoint::Positions(p) => Some(p.since_ms.saturating_sub(REPLAY_MARGIN_MS)),
            _ => None,
        },
        failed: false,
    };
    stream::unfold(reader, |mut reader| async move {
        if reader.failed {
            return None;
        }
        let page = reader.read_page().await;
        if page.is_err() {
            reader.failed = true;
        }
        Some((page, reader))
    })
    .flat_map(|page| match page {
        Ok(events) => stream::iter(events.into_iter().map(Ok)).boxed(),
        Err(error) => stream::once(async move { Err(error) }).boxed(),
    })
    .boxed()
}

impl Reader {
    /// The next batch of events (possibly empty after a long-poll timeout).
    async fn read_page(&mut self) -> Result<Vec<TwinEvent>, TwinError> {
        let from = match self.next {
            Some(n) => n,
            None => {
                let start = self.first_not_before(self.since_ms).await?;
                self.next = Some(start);
                start
            }
        };
        let page = self.get(from, PAGE, WAIT_SECS).await?;
        self.next = Some(page.next_sequence_number.max(from));
        Ok(page.events.into_iter().map(WireEvent::into_event).collect())
    }

    /// The first sequence number whose event was enqueued at `since_ms` or later, or, without
    /// an instant, the one the next committed event will carry.
    ///
    /// The stream can only be read by sequence number, but "the event at or after n exists and
    /// is older than the instant" holds for a prefix of the log, so a doubling search followed
    /// by bisection finds where it ends in about 2·log2(length) short reads.
    async fn first_not_before(&self, since_ms: Option<u64>) -> Result<u64, TwinError> {
        let before = |n: u64| async move {
            let page = self.get(n, 1, 0).await?;
            Ok::<bool, TwinError>(
                page.events
                    .first()
                    .is_some_and(|event| since_ms.is_none_or(|since| event.enqueued_ms < since)),
            )
        };
        if !before(1).await? {
            return Ok(1);
        }
        let (mut present, mut absent) = (1_u64, 2_u64);
        while before(absent).await? {
            present = absent;
            absent = absent.saturating_mul(2);
        }
        while absent - present > 1 {
            let middle = present + (absent - present) / 2;
            if before(middle).await? {
                present = middle;
            } else {
                absent = middle;
            }
        }
        Ok(absent)
    }

    async fn get(&self, from: u64, limit: usize, wait: u64) -> Result<Page, TwinError> {
        let url = format!(
            "{}/events?from={from}&limit={limit}&wait={wait}&api-version={API_VERSION}",
            self.base_url
        );
        let transport = |source| TwinError::Transport {
            operation: "read events",
            device_id: "-".into(),
            source,
        };
        let response = self
            .http
            .get(url)
            .header("Authorization", self.service.token()?)
            .timeout(Duration::from_secs(wait + 30))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(TwinError::Refused {
                operation: "read events",
                device_id: "-".into(),
                status,
                message: super::refusal_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(|source| TwinError::Decode {
            operation: "read events",
            device_id: "-".into(),
            source,
        })
    }
}
