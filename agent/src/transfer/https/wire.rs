//! What HTTPS downloads read from URLs and headers: the route, the range answered and the
//! file's version.

use reqwest::header::{CONTENT_RANGE, ETAG, HeaderMap, LAST_MODIFIED};
use reqwest::{StatusCode, Url};

/// How a download travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Over HTTPS from this URL.
    Https(Url),
    /// In chunks through the hub.
    Hub,
    /// No allowed transport can fetch the source; the text says why.
    Refused(String),
}

/// Picks the transport of a download from its `source` and `protocol`.
///
/// Known gap: a blob name never goes over HTTPS, because the backend does not hand out
/// download URLs for blob names yet.
pub fn route(source: &str, protocol: &str) -> Route {
    let allows_https = protocol.split('|').any(|transport| transport == "https");
    let only_https = protocol.split('|').all(|transport| transport == "https");
    match Url::parse(source) {
        Ok(url) if url.scheme() == "https" && allows_https => Route::Https(url),
        _ if only_https => Route::Refused(format!(
            "protocol https needs an https:// URL as source, not {source:?}"
        )),
        _ => Route::Hub,
    }
}

/// `Content-Range: bytes {start}-{end}/{total}` as `(start, total)`.
pub(super) fn content_range(headers: &HeaderMap) -> Option<(u64, u64)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// The version of the file for `If-Range`: a strong ETag, else Last-Modified.
pub(super) fn validator(headers: &HeaderMap) -> Option<String> {
    let text = |name| headers.get(name)?.to_str().ok().map(str::to_owned);
    text(ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| text(LAST_MODIFIED))
}

/// Answers worth asking again for: the server is busy or failing for now.
pub(super) fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_url_goes_over_https_only_when_the_step_allows_it() {
        let url = "https://downloads.example.net/fw.bin";
        assert!(matches!(route(url, "https|iotmqtt"), Route::Https(_)));
        assert!(matches!(route(url, "https"), Route::Https(_)));
        assert_eq!(route(url, "iotmqtt"), Route::Hub);
        assert_eq!(route("fw.bin", "https|iotamqp|iotmqtt"), Route::Hub);
        assert!(matches!(route("fw.bin", "https"), Route::Refused(_)));
        assert!(matches!(
            route("http://downloads.example.net/fw.bin", "https"),
            Route::Refused(_)
        ));
    }

    #[test]
    fn content_range_gives_start_and_total() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_RANGE, "bytes 100-199/1000".parse().expect("header"));
        assert_eq!(content_range(&headers), Some((100, 1000)));
        headers.insert(CONTENT_RANGE, "bytes 100-199/*".parse().expect("header"));
        assert_eq!(
            content_range(&headers),
            None,
            "an unknown total cannot be resumed"
        );
    }

    #[test]
    fn weak_etags_give_way_to_last_modified() {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, "W/\"v1\"".parse().expect("header"));
        assert_eq!(validator(&headers), None);
        let stamp = "Wed, 02 Dec 2026 10:00:00 GMT";
        headers.insert(LAST_MODIFIED, stamp.parse().expect("header"));
        assert_eq!(validator(&headers).as_deref(), Some(stamp));
        headers.insert(ETAG, "\"v2\"".parse().expect("header"));
        assert_eq!(validator(&headers).as_deref(), Some("\"v2\""));
    }
}
