//! Watches that recover from "resource version too old" by listing again (field case F20).
//!
//! kube-runtime 5's watcher starts over with a fresh LIST when a 410 arrives as an ERROR event
//! inside a watch stream, but when the server refuses to *start* the watch with HTTP 410 it
//! keeps retrying from the same expired resource version forever. [`relisting_watcher`] drops
//! the inner watcher on that error, so the next poll lists again.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use kube::Api;
use kube::Resource;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use super::metrics::{Metrics, ResourceLabel};

/// A watcher of `api` that lists again when a watch cannot start from its resource version.
pub fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    struct State<K: 'static> {
        api: Api<K>,
        config: watcher::Config,
        inner: Option<BoxStream<'static, Result<Event<K>, watcher::Error>>>,
    }

    // Exported at 0 from the start, so that a dashboard or alert finds the series.
    drop(metrics.relists.get_or_create(&ResourceLabel { resource }));

    let state = State {
        api,
        config,
        inner: None,
    };
    stream::unfold(state, move |mut state| {
        let metrics = metrics.clone();
        async move {
            let inner = state.inner.get_or_insert_with(|| {
                watcher::watcher(state.api.clone(), state.config.clone()).boxed()
            });
            let item = inner.next().await?;
            if let Err(error) = &item
                && is_gone_at_start(error)
            {
                tracing::info!(resource, "watch start refused with 410 Gone; listing again");
                metrics
                    .relists
                    .get_or_create(&ResourceLabel { resource })
                    .inc();
                state.inner = None;
            }
            Some((item, state))
        }
    })
}

/// Whether the server refused to start a watch because the resource version expired.
fn is_gone_at_start(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410
    )
}
