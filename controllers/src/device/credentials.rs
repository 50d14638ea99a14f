//! Device credentials: the Secret the operator keeps keys in, or the one the spec names.
//!
//! Keys live only in Secrets and in the hub registry; they never appear in status, Events
//! or logs.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloudpillar_crds::{AuthMethod, Device};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use crate::error::{Error, KubeContext, Result, is_status};
use crate::runtime::key_of;
use crate::twin::IdentityAuth;

/// Data key of the primary symmetric key in an operator-managed Secret.
pub const PRIMARY_KEY: &str = "primaryKey";
/// Data key of the secondary symmetric key in an operator-managed Secret.
pub const SECONDARY_KEY: &str = "secondaryKey";
/// Data key of the device id in an operator-managed Secret.
pub const DEVICE_ID: &str = "deviceId";

/// Name of the Secret the operator creates for a Device's generated keys.
pub fn key_secret_name(device_name: &str) -> String {
    format!("{device_name}-device-key")
}

/// The credentials to register for `device`, creating generated keys on first use.
pub async fn identity_auth(client: &kube::Client, device: &Device) -> Result<IdentityAuth> {
    let object = key_of(device);
    let namespace = device
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let permanent = &device.spec.authentication.permanent;

    if permanent.method == AuthMethod::X509 {
        let thumbprint = permanent.thumbprint.clone().unwrap_or_default();
        return Ok(IdentityAuth::X509 { thumbprint });
    }
    if let Some(reference) = &permanent.secret_ref {
        let missing = || Error::SecretMissing {
            object: object.clone(),
            secret: reference.name.clone(),
            key: reference.key.clone(),
        };
        let secret = secrets
            .get_opt(&reference.name)
            .await
            .kube("read key of", &object)?;
        let key = secret
            .as_ref()
            .and_then(|s| text(s, &reference.key))
            .ok_or_else(missing)?;
        return Ok(IdentityAuth::Sas {
            primary_key: key.clone(),
            secondary_key: key,
        });
    }

    // Operator-managed keys: create the Secret with fresh keys, or read the one that exists.
    // Creating first saves a read for every new Device; registration runs once per Device.
    let name = key_secret_name(&device.name_any());
    let created = generated_secret(device, &name);
    match secrets.create(&PostParams::default(), &created).await {
        Ok(secret) => keys(secret).ok_or(Error::Conflict { object }),
        Err(error) if is_status(&error, 409) => {
            let secret = secrets.get(&name).await.kube("read keys of", &object)?;
            keys(secret).ok_or_else(|| Error::SecretMissing {
                object,
                secret: name,
                key: PRIMARY_KEY.into(),
            })
        }
        Err(source) => Err(Error::Kube {
            action: "create keys for",
            object,
            source,
        }),
    }
}

/// Deletes the operator-managed key Secret of `device`, if the operator made one.
pub async fn delete_generated(client: &kube::Client, device: &Device) -> Result<()> {
    let Some(namespace) = device.namespace() else {
        return Ok(());
    };
    let auth = &device.spec.authentication.permanent;
    if auth.method == AuthMethod::X509 || auth.secret_ref.is_some() {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match secrets
        .delete(
            &key_secret_name(&device.name_any()),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if is_status(&error, 404) => Ok(()),
        Err(source) => Err(Error::Kube {
            action: "delete keys of",
            object: key_of(device),
            source,
        }),
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let value = String::from_utf8(bytes.0.clone()).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn keys(secret: Secret) -> Option<IdentityAuth> {
    Some(IdentityAuth::Sas {
        primary_key: text(&secret, PRIMARY_KEY)?,
        secondary_key: text(&secret, SECONDARY_KEY)?,
    })
}

fn generated_secret(device: &Device, name: &str) -> Secret {
    let random_key = || STANDARD.encode(rand::random::<[u8; 32]>());
    let data = BTreeMap::from([
        (
            PRIMARY_KEY.to_owned(),
            ByteString(random_key().into_bytes()),
        ),
        (
            SECONDARY_KEY.to_owned(),
            ByteString(random_key().into_bytes()),
        ),
        (
            DEVICE_ID.to_owned(),
            ByteString(device.device_id().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: device.namespace(),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "cloudpillar".to_owned(),
            )])),
            owner_references: device.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}
