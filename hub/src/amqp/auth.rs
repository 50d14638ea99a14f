//! Who may read what on one AMQP connection: SASL PLAIN with the shared access policy's name
//! and key grants everything; SASL ANONYMOUS grants nothing until a SAS token is put on the
//! `$cbs` node, and then only the entity the token names, until it expires.

use std::sync::{Arc, Mutex, PoisonError};

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use crate::core::Core;
use crate::rest::unix_now;
use crate::sas;

/// What a connection has proven so far.
#[derive(Debug, Default)]
struct Grants {
    /// Signed in with the policy key itself (SASL PLAIN).
    policy: bool,
    /// Resources granted by put tokens (host/path, no scheme) and their expiry.
    tokens: Vec<(String, u64)>,
}

/// The grants of one connection, shared by its SASL exchange and its links.
#[derive(Debug, Clone)]
pub struct ConnectionAuth {
    core: Arc<Core>,
    grants: Arc<Mutex<Grants>>,
}

impl ConnectionAuth {
    /// A connection that has proven nothing yet.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            grants: Arc::new(Mutex::new(Grants::default())),
        }
    }

    /// The namespace host tokens must name (the hub's host name).
    pub fn host(&self) -> &str {
        &self.core.config.hostname
    }

    /// Whether the connection may read `entity` (an event hub name or node) now.
    pub fn may_read(&self, entity: &str) -> bool {
        let wanted = format!("{}/{entity}", self.host());
        let now = unix_now();
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        grants.policy
            || grants.tokens.iter().any(|(resource, expiry)| {
                *expiry + sas::EXPIRY_TOLERANCE_SECS > now && covers(resource, &wanted)
            })
    }

    /// Checks a token put on `$cbs` for audience `name` and records what it grants.
    pub fn put_token(&self, name: &str, token: &str) -> Result<(), String> {
        let mut parsed = sas::parse(token).map_err(|e| e.to_string())?;
        if parsed.key_name.as_deref() != Some(self.core.config.policy_name.as_str()) {
            return Err("unknown shared access policy".into());
        }
        parsed.resource = without_scheme(&parsed.resource).to_owned();
        let audience = without_scheme(name);
        let wanted = if audience.is_empty() {
            self.host()
        } else {
            audience
        };
        parsed
            .verify(wanted, &[&self.core.policy_key], unix_now())
            .map_err(|e| e.to_string())?;
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        grants.tokens.push((parsed.resource, parsed.expiry));
        Ok(())
    }

    fn plain(&self, response: &[u8]) -> SaslCode {
        let mut parts = response.split(|b| *b == 0);
        let (_authz, user, password) = (parts.next(), parts.next(), parts.next());
        let ok = user == Some(self.core.config.policy_name.as_bytes())
            && password == Some(self.core.policy_key.as_bytes());
        if ok {
            self.grants
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .policy = true;
            SaslCode::Ok
        } else {
            tracing::warn!("AMQP client refused: wrong policy name or key");
            SaslCode::Auth
        }
    }
}

/// Whether a granted resource covers `wanted` (equal, or `wanted` lies below it).
fn covers(resource: &str, wanted: &str) -> bool {
    let (have, want) = (resource.to_ascii_lowercase(), wanted.to_ascii_lowercase());
    let have = have.trim_end_matches('/');
    want == have || want.starts_with(&format!("{have}/"))
}

/// `sb://host/path` and `amqps://host/path` as `host/path`.
fn without_scheme(uri: &str) -> &str {
    uri.split_once("://").map_or(uri, |(_, rest)| rest)
}

impl SaslAcceptor for ConnectionAuth {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("PLAIN"), Symbol::from("ANONYMOUS")])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let code = match init.mechanism.as_str() {
            "PLAIN" => init
                .initial_response
                .map_or(SaslCode::Auth, |r| self.plain(r.as_slice())),
            "ANONYMOUS" => SaslCode::Ok,
            _ => SaslCode::Auth,
        };
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism sends a challenge, so no response is expected.
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Sys,
            additional_data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_covers_its_entity_and_what_lies_below() {
        assert!(covers("edgehub.local/edgehub", "edgehub.local/edgehub"));
        assert!(covers("EdgeHub.local", "edgehub.local/edgehub"));
        assert!(covers("edgehub.local/", "edgehub.local/edgehub"));
        assert!(!covers("edgehub.local/other", "edgehub.local/edgehub"));
        assert!(!covers("edgehub.local/edge", "edgehub.local/edgehub"));
        assert_eq!(without_scheme("sb://h/e"), "h/e");
    }
}
