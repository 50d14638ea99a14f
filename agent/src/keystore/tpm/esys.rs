//! The TPM calls, through tpm2-tss's ESAPI.

use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, KeyedHashScheme, MaxBuffer, Public,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;

use super::{TpmError, TpmKey};

impl TpmKey {
    /// HMAC-SHA256 of `message` by the TPM with the key at the handle.
    pub fn hmac_sha256(&self, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let buffer = MaxBuffer::try_from(message.to_vec())
            .map_err(|_| TpmError::MessageTooLong { len: message.len() })?;
        let mut context = self.open()?;
        let object = self.find(&mut context)?.ok_or(TpmError::HandleMissing {
            handle: self.handle,
        })?;
        let digest = context
            .hmac(object, buffer, HashingAlgorithm::Sha256)
            .map_err(|e| self.failed("compute an HMAC", e))?;
        Ok(digest.value().to_vec())
    }

    /// Stores `key` as an HMAC-SHA256 object at the handle, replacing any object there.
    pub fn import(&self, key: &[u8]) -> Result<(), TpmError> {
        let sensitive = SensitiveData::try_from(key.to_vec())
            .map_err(|_| TpmError::KeyTooLong { len: key.len() })?;
        let mut context = self.open()?;

        // Storage primary key: derived from the owner seed, so the same every time.
        let primary = context
            .create_primary(
                Hierarchy::Owner,
                storage_template()?,
                None,
                None,
                None,
                None,
            )
            .map_err(|e| self.failed("create the storage primary key", e))?
            .key_handle;
        let stored = self.store_under(&mut context, primary, sensitive);
        let flushed = context.flush_context(primary.into());
        stored?;
        flushed.map_err(|e| self.failed("flush the storage primary key", e))
    }

    /// Checks that the handle holds an object.
    pub fn check(&self) -> Result<(), TpmError> {
        let mut context = self.open()?;
        self.find(&mut context)?.ok_or(TpmError::HandleMissing {
            handle: self.handle,
        })?;
        Ok(())
    }

    fn open(&self) -> Result<Context, TpmError> {
        let open = |source: tss_esapi::Error| TpmError::Open {
            tcti: self.tcti.clone(),
            source: source.into(),
        };
        let conf = TctiNameConf::from_str(&self.tcti).map_err(open)?;
        let mut context = Context::new(conf).map_err(open)?;
        // Owner hierarchy and the key carry empty authorisation values.
        context.set_sessions((Some(AuthSession::Password), None, None));
        Ok(context)
    }

    fn persistent(&self) -> Result<PersistentTpmHandle, TpmError> {
        PersistentTpmHandle::new(self.handle).map_err(|e| self.failed("name the handle", e))
    }

    /// The object at the handle, or `None` when the handle is free.
    fn find(&self, context: &mut Context) -> Result<Option<ObjectHandle>, TpmError> {
        let wanted = TpmHandle::Persistent(self.persistent()?);
        // Neither command takes an authorisation session.
        let (data, _) = context
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, self.handle, 1))
            .map_err(|e| self.failed("list persistent handles", e))?;
        let present =
            matches!(data, CapabilityData::Handles(list) if list.first() == Some(&wanted));
        if !present {
            return Ok(None);
        }
        let object = context
            .execute_without_session(|c| c.tr_from_tpm_public(wanted))
            .map_err(|e| self.failed("open the persistent key", e))?;
        Ok(Some(object))
    }

    /// Creates and loads the key under `primary`, then moves it to the handle.
    fn store_under(
        &self,
        context: &mut Context,
        primary: KeyHandle,
        sensitive: SensitiveData,
    ) -> Result<(), TpmError> {
        let created = context
            .create(primary, hmac_template()?, None, Some(sensitive), None, None)
            .map_err(|e| self.failed("create the HMAC key", e))?;
        let loaded = context
            .load(primary, created.out_private, created.out_public)
            .map_err(|e| self.failed("load the HMAC key", e))?;
        let persisted = self.persist(context, loaded.into());
        let flushed = context.flush_context(loaded.into());
        persisted?;
        flushed.map_err(|e| self.failed("flush the loaded HMAC key", e))
    }

    /// Frees the handle if taken, then makes `object` persistent there.
    fn persist(&self, context: &mut Context, object: ObjectHandle) -> Result<(), TpmError> {
        let target = Persistent::Persistent(self.persistent()?);
        if let Some(old) = self.find(context)? {
            context
                .evict_control(Provision::Owner, old, target)
                .map_err(|e| self.failed("remove the previous key", e))?;
        }
        context
            .evict_control(Provision::Owner, object, target)
            .map_err(|e| self.failed("persist the HMAC key", e))?;
        Ok(())
    }

    fn failed(&self, action: &'static str, source: tss_esapi::Error) -> TpmError {
        TpmError::Command {
            action,
            handle: self.handle,
            source: source.into(),
        }
    }
}

fn template_error(source: tss_esapi::Error) -> TpmError {
    TpmError::Template {
        source: source.into(),
    }
}

/// An ECC P-256 restricted decryption key: the parent of the imported key.
fn storage_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(template_error)?;
    let parameters = PublicEccParametersBuilder::new_restricted_decryption_key(
        SymmetricDefinitionObject::AES_128_CFB,
        EccCurve::NistP256,
    )
    .build()
    .map_err(template_error)?;
    Public::builder()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(template_error)
}

/// A keyed-hash signing object whose key the caller supplies (sensitive data origin clear).
fn hmac_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(template_error)?;
    Public::builder()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(
            KeyedHashScheme::HMAC_SHA_256,
        ))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(template_error)
}
