//! Types of the jump host's registration API (`POST /v1/register`), shared by server and agent.

use serde::{Deserialize, Serialize};

/// SSHSIG namespace of a key-rotation proof.
pub const ROTATION_NAMESPACE: &str = "assist-rotate-v1";

/// Body of `POST /v1/register`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub serial: String,
    /// OpenSSH one-line public key, `ssh-ed25519 AAAA… [comment]`.
    pub public_key: String,
    /// Proof of possession of the key currently bound to the serial, needed to replace an
    /// unexpired binding: an armored SSHSIG (as `ssh-keygen -Y sign -n assist-rotate-v1`
    /// writes) by the old key over [`rotation_message`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_proof: Option<String>,
    /// Proof of the serial's enrollment secret, needed to create a binding when the jump
    /// host has an `enrollment_key` (see [`crate::enroll`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentProof>,
}

/// `{"at": UNIX_SECONDS, "mac": HEX}`: [`crate::enroll::proof`] of the serial's secret over
/// the serial, the public key and `at`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentProof {
    pub at: u64,
    pub mac: String,
}

/// The message a rotation proof signs: binds the serial to the new key.
pub fn rotation_message(serial: &str, new_public_key: &str) -> Vec<u8> {
    format!(
        "{ROTATION_NAMESPACE}\n{serial}\n{}\n",
        new_public_key.trim()
    )
    .into_bytes()
}

/// Successful answer of `POST /v1/register` (201 for a new binding, 200 for a renewal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterResponse {
    pub serial: String,
    /// SHA256 fingerprint of the bound key.
    pub fingerprint: String,
    /// Unix seconds when the binding expires.
    pub expires_at: u64,
    /// Longest assistance window the policy allows, in seconds.
    pub max_assistance_secs: u64,
}

/// Body of every API error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}
