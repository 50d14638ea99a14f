//! The streamer's uploads signed by the key holder role (`POST /v1/sign/blob`), through the same
//! client that signs recipes for the operator. The key holder reads the blob from its own view
//! of the uploads container, which must be the streamer's (one volume or storage account).

use async_trait::async_trait;
use cloudpillar_backend::keys::{KeyError, SignBlobRequest, SignResponse, Signed};
use cloudpillar_backend::streamer::UploadSigner;

use crate::keyholder_signer::{KeyholderError, KeyholderSigner};

/// Container name the key holder's blob route takes for devices' uploads.
const UPLOADS: &str = "uploads";

impl KeyholderSigner {
    /// Asks the key holder to sign the blob at `path` of the uploads container.
    async fn sign_upload_blob(&self, path: &str) -> Result<SignResponse, KeyholderError> {
        let body = SignBlobRequest {
            container: UPLOADS.to_owned(),
            path: path.to_owned(),
        };
        self.post("/v1/sign/blob", &body).await
    }
}

#[async_trait]
impl UploadSigner for KeyholderSigner {
    async fn sign_upload(&self, path: &str) -> Result<Signed, KeyError> {
        let signed = self
            .sign_upload_blob(path)
            .await
            .map_err(|error| KeyError::Sign {
                key: "the key holder".to_owned(),
                reason: format!("upload {path}"),
                source: Some(Box::new(error)),
            })?;
        Ok(Signed {
            text: signed.signature,
            key_id: signed.key_id,
            sha512: signed.sha512,
            size: signed.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use cloudpillar_backend::blob::{BlobConfig, BlobStores};
    use cloudpillar_backend::keys::{KeyHolder, LocalSigner};
    use cloudpillar_protocol::signing::SigningKey;

    use super::*;

    #[tokio::test]
    async fn an_upload_is_signed_by_the_key_holder_role_over_http() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = SigningKey::generate().expect("key");
        let holder = KeyHolder::new(Arc::new(LocalSigner::new(key.clone())));
        let root = dir.path().join("blobs");
        let stores = BlobStores::open(&BlobConfig::Filesystem { root })
            .await
            .expect("blob stores");
        stores
            .uploads
            .put("dev-1/diag.bin", Bytes::from_static(b"diagnostics"))
            .await
            .expect("upload");
        let app = cloudpillar_backend::keys::router(
            holder,
            stores,
            cloudpillar_backend::keys::SignAccess::Token("t0ken".into()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken").expect("token");

        let signer = KeyholderSigner::new(&url, Some(token)).expect("client");
        let signed = signer.sign_upload("dev-1/diag.bin").await.expect("signed");
        assert_eq!((signed.key_id.as_str(), signed.size), (key.key_id(), 11));
        assert!(signed.text.starts_with(&format!("{}:", key.key_id())));

        let missing = signer.sign_upload("dev-1/absent.bin").await;
        let error = missing.expect_err("refused");
        let chain = format!("{:?}", error);
        assert!(chain.contains("404"), "{chain}");
    }
}
