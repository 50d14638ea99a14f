//! Enrollment management over REST, on DPS's service paths:
//! `PUT/GET/DELETE /enrollments/{id}` and `/enrollmentGroups/{id}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;

use super::{Enrollment, SYMMETRIC_KEY, X509, attest, group_key, individual_key};
use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::rest::{ApiError, json_body};
use crate::sas::random_key;
use crate::store::{ENROLLMENTS, txn_delete, txn_put};

/// The enrollment routes.
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route(
            "/enrollments/{id}",
            put(put_individual)
                .get(get_individual)
                .delete(delete_individual),
        )
        .route(
            "/enrollmentGroups/{id}",
            put(put_group).get(get_group).delete(delete_group),
        )
}

async fn store(core: &Core, key: String, mut e: Enrollment) -> Result<Enrollment, HubError> {
    match e.attestation.kind.as_str() {
        SYMMETRIC_KEY => {
            e.attestation.x509 = None;
            let keys = &mut e.attestation.symmetric_key;
            for k in [&mut keys.primary_key, &mut keys.secondary_key] {
                if k.as_deref().is_none_or(str::is_empty) {
                    *k = Some(random_key());
                }
            }
        }
        X509 => attest::prepare(&mut e, key.starts_with("individual/"))?,
        other => {
            return Err(Refusal::bad_request(format!(
                "attestation type {other} is not implemented (symmetricKey, x509)"
            ))
            .into());
        }
    }
    let saved = e.clone();
    core.store
        .writer()
        .write(move |b| Ok(txn_put(b.txn, ENROLLMENTS, &key, &saved)?))
        .await?;
    Ok(e)
}

fn parse(body: &Bytes) -> Result<Enrollment, ApiError> {
    serde_json::from_value(json_body(body)?)
        .map_err(|e| Refusal::bad_request(format!("enrollment body: {e}")).into())
}

async fn put_individual(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut e = parse(&body)?;
    e.registration_id = Some(id.clone());
    e.enrollment_group_id = None;
    Ok(axum::Json(store(&core, individual_key(&id), e).await?).into_response())
}

async fn put_group(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut e = parse(&body)?;
    e.enrollment_group_id = Some(id.clone());
    e.registration_id = None;
    Ok(axum::Json(store(&core, group_key(&id), e).await?).into_response())
}

fn get(core: &Core, key: &str) -> Result<Response, ApiError> {
    let e: Enrollment = core
        .store
        .get(ENROLLMENTS, key)
        .map_err(HubError::from)?
        .ok_or_else(|| Refusal::new(404, "EnrollmentNotFound", key.to_string()))?;
    Ok(axum::Json(e).into_response())
}

async fn get_individual(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get(&core, &individual_key(&id))
}

async fn get_group(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get(&core, &group_key(&id))
}

async fn delete(core: &Core, key: String) -> Result<Response, ApiError> {
    let existed = core
        .store
        .writer()
        .write(move |b| Ok(txn_delete(b.txn, ENROLLMENTS, &key)?))
        .await?;
    if existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Refusal::new(404, "EnrollmentNotFound", "no such enrollment").into())
    }
}

async fn delete_individual(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete(&core, individual_key(&id)).await
}

async fn delete_group(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete(&core, group_key(&id)).await
}
