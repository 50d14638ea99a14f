//! Azure Blob Storage containers through `object_store`, plus container creation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use reqwest::Url;
use sha2::Sha256;

use super::BlobError;

/// Account name of Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Key of Azurite's well-known development account (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Storage service version sent with container creation requests.
const STORAGE_VERSION: &str = "2021-08-06";

/// How to reach an Azure storage account.
///
/// In production, leave `endpoint` unset (`https://{account}.blob.core.windows.net`) and give
/// either the account key or nothing: without a key, `object_store` resolves a workload or
/// managed identity from the standard `AZURE_*` environment variables, and the containers must
/// already exist (creating them needs the key).
#[derive(Clone)]
pub struct AzureBlobConfig {
    /// Storage account name.
    pub account: String,
    /// Base64 account key, when shared-key auth is used.
    pub access_key: Option<String>,
    /// Blob service URL including the account for path-style hosts such as Azurite
    /// (`http://127.0.0.1:10000/devstoreaccount1`); `None` for the public cloud.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AzureBlobConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobConfig")
            .field("account", &self.account)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AzureBlobConfig {
    /// Azurite's development account at `blob_url`
    /// (e.g. `http://127.0.0.1:10000/devstoreaccount1`).
    pub fn azurite(blob_url: impl Into<String>) -> Self {
        Self {
            account: AZURITE_ACCOUNT.to_owned(),
            access_key: Some(AZURITE_KEY.to_owned()),
            endpoint: Some(blob_url.into().trim_end_matches('/').to_owned()),
        }
    }

    /// Opens container `name`, creating it first when an account key is configured.
    pub(super) async fn open_container(&self, name: &str) -> Result<MicrosoftAzure, BlobError> {
        crate::install_tls_provider();
        if self.access_key.is_some() {
            self.create_container(name).await?;
        }
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(&self.account)
            .with_container_name(name);
        if let Some(key) = &self.access_key {
            builder = builder.with_access_key(key);
        }
        if let Some(endpoint) = &self.endpoint {
            let plain_http = endpoint.starts_with("http://");
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(plain_http);
        }
        builder.build().map_err(|source| BlobError::Open {
            container: name.to_owned(),
            reason: "invalid Azure storage settings".to_owned(),
            source: Some(Box::new(source)),
        })
    }

    /// Creates container `name` (Create Container REST call with Shared Key auth); an existing
    /// container is fine. `object_store` has no container-level operations, hence this call.
    pub async fn create_container(&self, name: &str) -> Result<(), BlobError> {
        let open_error =
            |reason: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
                BlobError::Open {
                    container: name.to_owned(),
                    reason,
                    source,
                }
            };
        let key = self.access_key.as_deref().ok_or_else(|| {
            open_error(
                "creating a container needs the account key".to_owned(),
                None,
            )
        })?;
        let base = self
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", self.account));
        let mut url = Url::parse(&base)
            .map_err(|e| open_error(format!("bad endpoint {base}"), Some(Box::new(e))))?;
        url.path_segments_mut()
            .map_err(|()| open_error(format!("endpoint {base} cannot hold a path"), None))?
            .pop_if_empty()
            .push(name);
        url.set_query(Some("restype=container"));

        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let signature = shared_key_signature(key, &self.account, "PUT", &url, &date)
            .map_err(|reason| open_error(reason, None))?;
        let http = crate::http_client()
            .map_err(|e| open_error("cannot build an HTTP client".to_owned(), Some(Box::new(e))))?;
        let response = http
            .put(url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", STORAGE_VERSION)
            .header("content-length", "0")
            .header(
                "authorization",
                format!("SharedKey {}:{signature}", self.account),
            )
            .send()
            .await
            .map_err(|e| open_error(format!("request to {url} failed"), Some(Box::new(e))))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::CONFLICT {
            tracing::debug!(container = name, %status, "container ready");
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(open_error(
            format!("create container answered {status}: {body}"),
            None,
        ))
    }
}

/// Shared Key signature of a request without body or content headers, as the Blob service
/// defines it: eleven empty standard header lines, the `x-ms-*` headers, then the account-scoped
/// resource path with its query parameters.
fn shared_key_signature(
    key: &str,
    account: &str,
    verb: &str,
    url: &Url,
    date: &str,
) -> Result<String, String> {
    let mut resource = format!("/{account}{}", url.path());
    let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    query.sort();
    for (name, value) in query {
        resource.push_str(&format!("\n{}:{value}", name.to_lowercase()));
    }
    let to_sign = format!(
        "{verb}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{STORAGE_VERSION}\n{resource}"
    );
    let key = STANDARD
        .decode(key)
        .map_err(|_| "the account key is not base64".to_owned())?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|_| "the account key cannot key HMAC-SHA256".to_owned())?;
    mac.update(to_sign.as_bytes());
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_key_signature_covers_account_path_and_sorted_query() {
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/logs?restype=container")
            .expect("url");
        let date = "Fri, 04 Dec 2026 10:00:00 GMT";
        let signature =
            shared_key_signature(AZURITE_KEY, AZURITE_ACCOUNT, "PUT", &url, date).expect("sign");

        let expected_text = "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 04 Dec 2026 10:00:00 GMT\n\
             x-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/logs\nrestype:container";
        let key = STANDARD.decode(AZURITE_KEY).expect("key");
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("mac");
        mac.update(expected_text.as_bytes());
        assert_eq!(signature, STANDARD.encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn debug_output_hides_the_account_key() {
        let config = AzureBlobConfig::azurite("http://127.0.0.1:1/devstoreaccount1");
        assert!(!format!("{config:?}").contains(AZURITE_KEY));
    }
}
