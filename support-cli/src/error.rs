//! The errors the CLI reports to a person, and the exit status each one maps to.

/// Exit status of a usage error: bad flags, a malformed code or serial (like clap).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the jump host or the device could not be reached or refused us (like ssh).
pub const EXIT_CONNECTION: i32 = 255;
/// Exit status of any other local failure (a file that cannot be written, ...).
pub const EXIT_LOCAL: i32 = 1;

/// What the person typed is wrong; nothing was sent anywhere.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Why hopping to a device failed, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    #[error("cannot reach the jump host at {addr}: {cause}")]
    Unreachable { addr: String, cause: std::io::Error },
    #[error("the jump host closed the connection: is your address in its support_cidrs allowlist?")]
    JumpClosed,
    /// The jump host's own words before it closed (a penalty, a ban, an address refused).
    #[error("the jump host refused the connection: {0}")]
    JumpRefused(String),
    #[error(
        "{addr} answered {what}, not SSH: is that the API port? Give the jump host's SSH \
         port (its ssh_listen), or its wss://HOST/v1/ssh address for SSH over HTTPS"
    )]
    NotSsh { addr: String, what: String },
    #[error(
        "the jump host does not know engineer {engineer} with this key ({origin}; ask the jump \
         host admin to add your public key to its policy under that name)"
    )]
    EngineerRefused { engineer: String, origin: String },
    #[error("no key to log in to the jump host with: {0}")]
    NoIdentity(String),
    #[error("device {serial} is not connected (has the customer enabled assistance?)")]
    DeviceNotConnected { serial: String },
    #[error("the jump host refused to open {serial}:{port}: {reason}")]
    ChannelRefused {
        serial: String,
        port: u32,
        reason: String,
    },
    #[error(
        "the device {serial} closed the connection before login (is its SSH server running? \
         ask the customer to stop and enable assistance again)"
    )]
    DeviceClosed { serial: String },
    #[error(
        "the SSH server of device {serial} refused the key of this code, although the device \
         proved it knows the code (so the code is right): its server does not accept the \
         agent's key line for user {user}; the customer's `assist-client status` (and its \
         log) says why"
    )]
    CodeRefused { serial: String, user: String },
    #[error(
        "device {serial} did not prove that it knows the code: {why}; it may run an \
         assist-client too old to prove it, or whatever answers as {serial} is not the \
         customer's machine (nothing was sent to it)"
    )]
    NotProven { serial: String, why: String },
    #[error(
        "device {serial} could not prove that it knows this code: check the code with the \
         customer (codes expire when assistance is stopped); if it is right, whatever answers \
         as {serial} is not the customer's machine (nothing was sent to it)"
    )]
    CodeNotProven { serial: String },
    #[error("{0}")]
    HostKey(String),
    #[error("the device closed the session without an exit status")]
    NoExitStatus,
    /// The device's end said why it closed the session.
    #[error("the session with {serial} ended: {why}")]
    Ended { serial: String, why: String },
    #[error("the jump host closed the session")]
    JumpLost,
    #[error(
        "the device {serial} refused to connect to {target} ({reason}): it forwards only to the \
         services the customer configured; ask for the service's HOST:PORT in their \
         [services] and pass --to HOST:PORT"
    )]
    ServiceRefused {
        serial: String,
        target: String,
        reason: String,
    },
    #[error("the session with device {serial} ended (assistance was stopped or its window ended)")]
    SessionEnded { serial: String },
    #[error("{what}: {cause}")]
    Ssh { what: String, cause: russh::Error },
    /// Every jump host of the list failed; each one's reason.
    #[error("no jump host of the list let us in: {tried}")]
    NoJumpHost { tried: String },
}

impl HopError {
    /// Whether the failure was this jump host's (down, refusing this address, not SSH), so
    /// another jump host of the list may well answer.
    pub fn another_jump_host_may_answer(&self) -> bool {
        matches!(
            self,
            HopError::Unreachable { .. }
                | HopError::JumpClosed
                | HopError::JumpRefused(_)
                | HopError::NotSsh { .. }
                | HopError::Ssh { .. }
        )
    }
}

/// The exit status for an error chain: the first error of ours found in it decides.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return EXIT_USAGE;
        }
        if cause.is::<HopError>() {
            return EXIT_CONNECTION;
        }
    }
    EXIT_LOCAL
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_codes_follow_the_cause() {
        let usage = anyhow::Error::new(UsageError("x".into())).context("while parsing");
        assert_eq!(exit_code(&usage), EXIT_USAGE);
        let hop: anyhow::Result<()> = Err(HopError::JumpLost).context("connecting");
        assert_eq!(exit_code(&hop.unwrap_err()), EXIT_CONNECTION);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), EXIT_LOCAL);
    }
}
