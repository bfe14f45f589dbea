//! The russh handler of one connection: publickey login, then the few requests each role
//! may make. Anything slow (channel opens towards devices, relaying) runs in spawned tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use assist_proto::limits::NOTES_PORT;
use russh::keys::{Certificate, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::Relay;
use super::auth::{self, Identity, Refusal};
use super::hop::{self, CONNECT_FAILED};
use super::routes::SessionId;

/// SSH reason code "administratively prohibited" with our own description.
pub(crate) const PROHIBITED: u32 = 1;
/// Longest address string a device may give in `tcpip-forward` (a DNS name's limit).
const MAX_FORWARD_ADDRESS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Ssh(#[from] russh::Error),
    #[error("connection refused: {0}")]
    Refused(String),
}

pub struct ConnHandler {
    relay: Arc<Relay>,
    peer: SocketAddr,
    session_id: SessionId,
    identity: Option<Identity>,
    /// The identity found when a key was offered, reused when its signature arrives. Boxed:
    /// russh keeps two copies of the handler in every session's task for the connection's
    /// life, and this is over half its size (bench/NOTES.md, idle memory).
    offered: Option<Box<(String, PublicKey, Identity)>>,
    /// Tells the connection task who logged in (ends the login grace timer).
    on_auth: Option<oneshot::Sender<Identity>>,
    /// Whether this (device) session has taken its serial's routes over yet.
    claimed: bool,
    /// Set on the first refused login attempt; the connection task counts it as a failed
    /// login if the connection then ends without one.
    refused: Arc<AtomicBool>,
    /// Tells the connection task of a refusal no other key can change (an address outside
    /// the allowlist), which it ends the connection with, reason included.
    on_fatal: Option<oneshot::Sender<String>>,
    /// The connection's span: russh runs these callbacks in its own task, outside it.
    span: tracing::Span,
}

impl ConnHandler {
    pub fn new(
        relay: Arc<Relay>,
        peer: SocketAddr,
        session_id: SessionId,
        on_auth: oneshot::Sender<Identity>,
        on_fatal: oneshot::Sender<String>,
        refused: Arc<AtomicBool>,
        span: tracing::Span,
    ) -> Self {
        Self {
            relay,
            peer,
            session_id,
            identity: None,
            offered: None,
            on_auth: Some(on_auth),
            claimed: false,
            refused,
            on_fatal: Some(on_fatal),
            span,
        }
    }

    /// Checks a login and records a refusal (logged and audited, never the key itself).
    async fn check(&self, user: &str, key: &PublicKey) -> Result<Identity, Refusal> {
        let policy = self.relay.policy.current();
        let now = SystemTime::now();
        let cached = self
            .offered
            .as_deref()
            .filter(|(u, k, _)| u == user && k.key_data() == key.key_data())
            .map(|(_, _, id)| id.clone());
        let result = match cached {
            // Expiry is checked again: the signature may arrive after the offer.
            Some(Identity::Device { expires_at, .. }) if expires_at <= now => {
                auth::check(&policy, &self.relay.store, self.peer.ip(), user, key, now).await
            }
            Some(id) => Ok(id),
            None => auth::check(&policy, &self.relay.store, self.peer.ip(), user, key, now).await,
        };
        result.map_err(|refusal| self.refused(user, refusal))
    }

    /// Records a refused login attempt (logged and audited, never the key itself).
    fn refused(&self, user: &str, refusal: Refusal) -> Refusal {
        self.refused.store(true, Ordering::Relaxed);
        crate::metrics::login_refused(if refusal.fatal { "not_allowed" } else { "key" });
        tracing::warn!(parent: &self.span, user, reason = %refusal.reason, "login refused");
        self.relay.audit(
            "ssh.auth",
            Some(user),
            self.peer.ip(),
            format!("refused: {}", refusal.reason),
        );
        refusal
    }

    /// Records a login (logged and audited with how the peer proved who it is).
    fn logged_in(&mut self, user: &str, id: Identity) {
        self.span.record("identity", id.name());
        let via = match &id {
            Identity::Engineer(engineer) => format!(" with {}", engineer.via()),
            Identity::Device { .. } => String::new(),
        };
        tracing::info!(parent: &self.span, role = id.role(), user, via, "logged in");
        crate::metrics::login_accepted(id.role());
        self.relay.audit(
            "ssh.auth",
            Some(user),
            self.peer.ip(),
            format!("accepted {}{via}", id.role()),
        );
        self.identity = Some(id);
    }

    /// Turns a refusal into the russh answer: a plain reject lets the client try another
    /// key; a fatal one is rejected too and the connection task then ends the connection
    /// with a disconnect that carries the reason, so the client can show it.
    fn answer(&mut self, result: Result<(), Refusal>) -> Result<Auth, HandlerError> {
        match result {
            Ok(()) => Ok(Auth::Accept),
            Err(refusal) if refusal.fatal => match self.on_fatal.take() {
                Some(tx) => {
                    let _ = tx.send(refusal.reason);
                    Ok(Auth::reject())
                }
                None => Err(HandlerError::Refused(refusal.reason)),
            },
            Err(_) => Ok(Auth::reject()),
        }
    }

    fn refuse_channel(&self, what: &str, reply: ChannelOpenHandle, code: u32, reason: String) {
        let _entered = self.span.enter();
        let who = self.identity.as_ref().map(Identity::name);
        refuse_open(&self.relay, who, self.peer, what, reply, code, reason);
    }

    fn refuse_request(&self, what: &str) {
        let reason = format!("{what} is not offered by the jump host");
        tracing::warn!(parent: &self.span, what, "request refused");
        self.relay.audit(
            "ssh.request",
            self.identity.as_ref().map(Identity::name),
            self.peer.ip(),
            format!("refused: {reason}"),
        );
    }
}

/// Why a hop to `serial` found no device: the words support-cli recognises.
pub(crate) fn not_connected(serial: &str) -> String {
    format!("device {serial} is not connected (has the customer enabled assistance?)")
}

/// Refuses a channel open with `reason` for the client to show, logged and audited.
pub(crate) fn refuse_open(
    relay: &Relay,
    who: Option<&str>,
    source: SocketAddr,
    what: &str,
    reply: ChannelOpenHandle,
    code: u32,
    reason: String,
) {
    tracing::warn!(what, %reason, "channel refused");
    relay.audit(
        "ssh.channel",
        who,
        source.ip(),
        format!("refused {what}: {reason}"),
    );
    // The reply only queues a message; there is nothing to wait for.
    relay
        .tasks
        .spawn(reply.reject(ChannelOpenFailure::Other { code, reason }));
}

impl russh::server::Handler for ConnHandler {
    type Error = HandlerError;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // russh offers a certificate's bare key here and tells which it was only once the
        // signature is in: with CAs in the policy, a key that is not listed may be a
        // certificate's, so the decision waits for `auth_publickey` /
        // `auth_openssh_certificate`, which refuse (and count) what does not pass.
        let policy = self.relay.policy.current();
        if policy.has_support_cas() {
            let probe = auth::check(
                &policy,
                &self.relay.store,
                self.peer.ip(),
                user,
                offer.public_key,
                SystemTime::now(),
            )
            .await;
            return match probe {
                Ok(id) => {
                    self.offered = Some(Box::new((user.to_owned(), offer.public_key.clone(), id)));
                    Ok(Auth::Accept)
                }
                Err(refusal) if refusal.fatal => {
                    let refusal = self.refused(user, refusal);
                    self.answer(Err(refusal))
                }
                Err(_) => Ok(Auth::Accept),
            };
        }
        let result = self.check(user, offer.public_key).await.map(|id| {
            self.offered = Some(Box::new((user.to_owned(), offer.public_key.clone(), id)));
        });
        self.answer(result)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let policy = self.relay.policy.current();
        let result = auth::check_certificate(
            &policy,
            self.peer.ip(),
            user,
            certificate,
            SystemTime::now(),
        );
        let result = match result {
            Ok(id) => {
                self.logged_in(user, id);
                Ok(())
            }
            Err(refusal) => Err(self.refused(user, refusal)),
        };
        self.answer(result)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let result = self
            .check(user, key.public_key)
            .await
            .map(|id| self.logged_in(user, id));
        self.answer(result)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            return Err(HandlerError::Refused("login without identity".into()));
        };
        if let Some(tx) = self.on_auth.take() {
            let _ = tx.send(identity);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(
            "session",
            reply,
            PROHIBITED,
            "the jump host offers no shell, exec or subsystem; hop through it with -J".into(),
        );
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let what = format!("direct-tcpip to {host_to_connect}:{port_to_connect}");
        let Some(Identity::Engineer(engineer)) = &self.identity else {
            self.refuse_channel(
                &what,
                reply,
                PROHIBITED,
                "devices may only hold reverse forwards".into(),
            );
            return Ok(());
        };
        // The jump host's own channel to a device: an engineer who could open it could put
        // any name on the customer's page.
        if port_to_connect == NOTES_PORT {
            self.refuse_channel(
                &what,
                reply,
                PROHIBITED,
                format!("port {NOTES_PORT} is reserved for the jump host's notes to devices"),
            );
            return Ok(());
        }
        let takes_notices = session.remote_sshid().starts_with(b"SSH-2.0-russh");
        let Some(serial) = self.relay.routes.connected_as(host_to_connect) else {
            if let Some(cluster) = &self.relay.cluster {
                // Perhaps on another node: the lookup and the link run in their own task.
                let span = tracing::info_span!(parent: &self.span, "hop", serial = %host_to_connect, port = port_to_connect);
                let hop = crate::cluster::remote_hop::RemoteHop {
                    relay: Arc::clone(&self.relay),
                    cluster: Arc::clone(cluster),
                    engineer: engineer.clone(),
                    source: self.peer,
                    asked: host_to_connect.to_owned(),
                    port: port_to_connect,
                    engineer_takes_notices: takes_notices,
                };
                self.relay
                    .tasks
                    .spawn(hop.run(channel, reply).instrument(span));
                return Ok(());
            }
            self.refuse_channel(&what, reply, CONNECT_FAILED, not_connected(host_to_connect));
            return Ok(());
        };
        // Asked of the policy in force now, not the one at login: a revoked engineer or a
        // narrowed scope takes effect at the next open. Before the port is looked at, so an
        // engineer out of scope learns only that, not which ports the device offers.
        let policy = self.relay.policy.current();
        if let Err(reason) = auth::hop_allowed(
            &policy,
            engineer,
            self.peer.ip(),
            &serial,
            SystemTime::now(),
        ) {
            self.refuse_channel(&what, reply, PROHIBITED, reason);
            return Ok(());
        }
        let Some(route) = self.relay.routes.lookup(host_to_connect, port_to_connect) else {
            let reason =
                format!("device {serial} is connected but offers no port {port_to_connect}");
            self.refuse_channel(&what, reply, CONNECT_FAILED, reason);
            return Ok(());
        };
        let span = tracing::info_span!(parent: &self.span, "hop", serial = %route.serial, port = port_to_connect);
        let hop = hop::Hop {
            relay: Arc::clone(&self.relay),
            engineer: engineer.clone(),
            source: self.peer,
            serial: route.serial.clone(),
            port: port_to_connect,
            target: hop::Target::Local(route),
            // support-cli (russh) shows why the device closed a session; stock OpenSSH
            // would log each notice as "bad ext data".
            engineer_takes_notices: takes_notices,
        };
        self.relay
            .tasks
            .spawn(hop.run(channel, reply).instrument(span));
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("forwarded-tcpip", reply, PROHIBITED, "not offered".into());
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("x11", reply, PROHIBITED, "not offered".into());
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(
            "direct-streamlocal",
            reply,
            PROHIBITED,
            "not offered".into(),
        );
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(Identity::Device { serial, .. }) = &self.identity else {
            self.refuse_request("tcpip-forward for engineers");
            return Ok(false);
        };
        if !self.claimed {
            // The first forward of a session takes the serial over: a reconnecting device
            // must not wait for its half-dead old session to time out.
            self.claimed = true;
            if let Some(old) = self
                .relay
                .routes
                .claim(serial, self.session_id, session.handle())
            {
                tracing::info!(parent: &self.span, serial, "replacing the previous session of this device");
                // In the relay's tracker, so a shutdown waits for it too.
                self.relay.tasks.spawn(async move {
                    let _ = old
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "replaced by a new connection of the same device".into(),
                            String::new(),
                        )
                        .await;
                });
            }
            // Before the forward is acknowledged, so once the device sees its tunnel up,
            // every node routes its hops here.
            if let Some(cluster) = &self.relay.cluster {
                cluster.take(serial).await;
            }
        }
        if address.len() > MAX_FORWARD_ADDRESS {
            tracing::warn!(parent: &self.span, bytes = address.len(), "route refused: address string too long");
            self.refuse_request(&format!(
                "tcpip-forward with an address of more than {MAX_FORWARD_ADDRESS} bytes"
            ));
            return Ok(false);
        }
        let limit = self.relay.limits.max_forwards_per_device;
        match self
            .relay
            .routes
            .add(serial, self.session_id, address, *port, limit)
        {
            Ok(assigned) => {
                tracing::info!(parent: &self.span, address, requested = *port, port = assigned, "route added");
                *port = assigned;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(parent: &self.span, address, port = *port, error = %e, "route refused");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(Identity::Device { serial, .. }) = &self.identity else {
            return Ok(false);
        };
        let removed = self.relay.routes.cancel(serial, self.session_id, port);
        tracing::info!(parent: &self.span, address, port, removed, "route cancelled");
        Ok(removed)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("shell");
        Ok(session.channel_failure(channel)?)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("exec");
        Ok(session.channel_failure(channel)?)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(&format!("subsystem {name}"));
        Ok(session.channel_failure(channel)?)
    }
}
