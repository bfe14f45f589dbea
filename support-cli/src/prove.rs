//! Before anything is sent to a device: its proof that it knows the code. The agent hands out
//! a document naming its serial and its SSH server's host keys, signed with a key derived from
//! the code (`assist_proto::attest`); the CLI checks it and then accepts only those host keys.
//! Whoever cannot sign it (a jump host playing the device, a squatter on the serial) gets
//! nothing from the engineer but this request.

use anyhow::Context;
use assist_proto::OneTimeCode;
use assist_proto::attest::{AttestError, MAX_LEN, Unverified};
use assist_proto::limits::ATTESTATION_PORT;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::error::HopError;
use crate::hop::Jump;
use crate::keys::{self, Proven};
use crate::progress::Progress;

/// How long the device may take to hand over its proof.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Both keys of a code, started early with the serial as typed.
pub type Derivation = JoinHandle<anyhow::Result<(keys::Keys, Duration)>>;

/// Starts deriving both keys of `code` for `serial` on a blocking thread.
pub fn start_derivation(serial: &str, code: &OneTimeCode) -> Derivation {
    let (serial, code) = (serial.to_string(), code.clone());
    tokio::spawn(async move { keys::derive(&serial, code).await })
}

/// Fetches the device's attestation through the jump host and checks it with the code.
/// `early` is the derivation for the serial as typed; a device that spells its serial
/// otherwise (case) gets its keys derived again with its spelling.
pub async fn prove(
    jump: &Jump,
    typed: &str,
    code: &OneTimeCode,
    early: Derivation,
    progress: &Progress,
) -> anyhow::Result<Proven> {
    progress.stage(format!("asking {typed} to prove it knows the code"));
    let document = fetch(jump, typed).await?;
    let not_proven = |why: String| HopError::NotProven {
        serial: typed.to_string(),
        why,
    };
    let unverified = Unverified::parse(&document, typed).map_err(|e| not_proven(e.to_string()))?;
    progress.stage("deriving the keys from the code");
    let (mut keys, mut took) = early.await.context("key derivation task")??;
    if unverified.serial() != typed {
        tracing::debug!(
            device = unverified.serial(),
            "the device spells its serial otherwise"
        );
        (keys, took) = keys::derive(unverified.serial(), code.clone()).await?;
    }
    progress.done(Some(format!("{} ms", took.as_millis())));
    let serial = unverified.serial().to_string();
    let attestation = unverified
        .verify(keys.attestation.public_key())
        .map_err(|e| match e {
            AttestError::BadSignature => HopError::CodeNotProven {
                serial: serial.clone(),
            },
            e => not_proven(e.to_string()),
        })?;
    tracing::debug!(
        host_keys = attestation.host_keys.len(),
        "device proved the code"
    );
    Ok(Proven {
        serial,
        login: keys.login,
        host_keys: attestation.host_keys,
        builtin_host: keys.builtin_host,
    })
}

/// The attestation document, read from the device's reserved port.
async fn fetch(jump: &Jump, serial: &str) -> Result<Vec<u8>, HopError> {
    let origin = SocketAddr::from(([127, 0, 0, 1], 0));
    let channel = match jump.open(serial, ATTESTATION_PORT, origin).await {
        Ok(channel) => channel,
        // The jump host's words say whether the device has no proof to offer (or its agent
        // could not make one) or the jump host refused the engineer (scope, allowlist).
        Err(HopError::ChannelRefused { reason, .. })
            if reason.contains("offers no port") || reason.contains("device refused") =>
        {
            return Err(HopError::NotProven {
                serial: serial.to_string(),
                why: format!("it offers no proof ({reason})"),
            });
        }
        Err(e) => return Err(e),
    };
    let mut document = Vec::new();
    let read = async {
        channel
            .into_stream()
            .take(MAX_LEN as u64 + 1)
            .read_to_end(&mut document)
            .await
    };
    match tokio::time::timeout(FETCH_TIMEOUT, read).await {
        Ok(Ok(_)) => Ok(document),
        Ok(Err(e)) => Err(HopError::NotProven {
            serial: serial.to_string(),
            why: format!("its proof did not arrive: {e}"),
        }),
        Err(_) => Err(HopError::NotProven {
            serial: serial.to_string(),
            why: format!(
                "its proof did not arrive within {} s",
                FETCH_TIMEOUT.as_secs()
            ),
        }),
    }
}
