//! Reconcile errors and their static categories (Event reasons and metric labels).

use crate::twin::TwinError;

/// Why a reconcile failed. Each variant names the failed action and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {object} failed")]
    Kube {
        /// What was attempted, for example `patch status of`.
        action: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A hub call failed.
    #[error("hub call for {object} failed")]
    Hub {
        /// `namespace/name` of the object reconciled.
        object: String,
        /// The hub error.
        #[source]
        source: TwinError,
    },
    /// The Hub an object names does not exist or cannot be used.
    #[error("hub {hub} of {object} is not usable: {reason}")]
    HubUnusable {
        /// `namespace/name` of the object reconciled.
        object: String,
        /// Name of the Hub.
        hub: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Secret is missing or lacks the key named.
    #[error("secret {secret} key {key} for {object} is missing or empty")]
    SecretMissing {
        /// What needs it: `namespace/name` of the object reconciled, or `hub <name>`.
        object: String,
        /// Name of the Secret.
        secret: String,
        /// Key inside it.
        key: String,
    },
    /// Signing a recipe failed.
    #[error("signing recipe {object} failed")]
    Sign {
        /// `namespace/name` of the Recipe.
        object: String,
        /// What went wrong.
        #[source]
        source: crate::recipe::SignError,
    },
    /// The object changed while it was being reconciled; it is read again.
    #[error("{object} changed during reconcile; retrying with a fresh read")]
    Conflict {
        /// `namespace/name` of the object.
        object: String,
    },
    /// The spec holds something the API server accepted but the operator cannot use.
    #[error("{object} has an unusable spec: {reason}")]
    InvalidSpec {
        /// `namespace/name` of the object.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// An object lacks its namespace or name.
    #[error("object without {what}")]
    Incomplete {
        /// `namespace` or `name`.
        what: &'static str,
    },
}

impl Error {
    /// A static category for metrics labels and Event reasons; never an object name.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "KubeConflict",
                kube::Error::Api(status) if status.code == 403 => "KubeForbidden",
                kube::Error::Api(_) => "KubeRefused",
                _ => "KubeUnavailable",
            },
            Self::Hub { source, .. } => match source {
                TwinError::NotFound { .. } => "HubNotFound",
                TwinError::EtagMismatch { .. } => "HubConflict",
                TwinError::Unavailable { .. } | TwinError::Transport { .. } => "HubUnavailable",
                TwinError::Refused {
                    status: 401 | 403, ..
                }
                | TwinError::BadPolicyKey => "HubUnauthorized",
                TwinError::Refused { .. } | TwinError::Decode { .. } => "HubRefused",
                TwinError::EventsUnsupported { .. }
                | TwinError::EventHub { .. }
                | TwinError::EventHubRefused { .. } => "HubEvents",
                TwinError::Encode { .. } => "MessageInvalid",
            },
            Self::HubUnusable { .. } => "HubUnusable",
            Self::SecretMissing { .. } => "SecretMissing",
            Self::Sign { .. } => "SigningFailed",
            Self::Conflict { .. } => "Conflict",
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::Incomplete { .. } => "Incomplete",
        }
    }

    /// Whether a person should look at it (Warning Event, warn log) rather than a retry
    /// being expected to clear it.
    pub fn needs_attention(&self) -> bool {
        matches!(
            self.category(),
            "KubeForbidden"
                | "HubUnauthorized"
                | "HubUnusable"
                | "SecretMissing"
                | "SigningFailed"
                | "InvalidSpec"
        )
    }
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds object context to Kubernetes client errors.
pub(crate) trait KubeContext<T> {
    /// Wraps the error as [`Error::Kube`] naming `action` and `object`.
    fn kube(self, action: &'static str, object: &str) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn kube(self, action: &'static str, object: &str) -> Result<T> {
        self.map_err(|source| Error::Kube {
            action,
            object: object.to_owned(),
            source,
        })
    }
}

/// Adds object context to hub errors.
pub(crate) trait HubContext<T> {
    /// Wraps the error as [`Error::Hub`] for `object`.
    fn hub(self, object: &str) -> Result<T>;
}

impl<T> HubContext<T> for std::result::Result<T, TwinError> {
    fn hub(self, object: &str) -> Result<T> {
        self.map_err(|source| Error::Hub {
            object: object.to_owned(),
            source,
        })
    }
}

/// Whether a Kubernetes error is HTTP `code`.
pub(crate) fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}
