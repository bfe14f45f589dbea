//! `assist-jumphost serve`: wires config, store, policy, host key, the SSH relay and the
//! registration API together, and shuts them down cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use assist_proto::limits::SHUTDOWN_GRACE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::api::live_cert::LiveCert;
use crate::api::{self, ApiState};
use crate::cluster::Cluster;
use crate::config::{self, ApiTls, JumphostConfig};
use crate::enroll::EnrollmentKey;
use crate::policy::Policy;
use crate::policy::watch::{self, PolicyHandle};
use crate::ssh::{self, Relay, hostkey};
use crate::store::audit_queue::AuditQueue;
use crate::store::cluster::Directory;
use crate::store::{self, Backend, PgStore, Store};

/// How often expired device keys are deleted (they are refused at login regardless).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the jump host in the foreground until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config_path))
}

async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = JumphostConfig::load(config_path)
        .with_context(|| format!("loading config {}", config_path.display()))?;
    // Private whether or not it existed: it holds the host key, the audit trail, the admin
    // socket and the enrollment key.
    crate::private_dir::ensure(&config.data_dir)?;
    // First: a second process on this data_dir stops here, before it could mark the
    // first one's open hops as interrupted.
    let admin_socket = admin::bind(&config.data_dir)?;
    let backend = config.store_backend()?;
    let node = config.node();
    let (store, directory, interrupted) = open_store(backend.clone(), node.clone()).await?;
    tracing::info!(store = %backend, node, "store open");
    if interrupted > 0 {
        tracing::warn!(
            hops = interrupted,
            "the previous run ended without recording the end of some hops; marked interrupted"
        );
    }
    let policy = Policy::load_dir(&config.policies_dir)
        .with_context(|| format!("loading policies from {}", config.policies_dir.display()))?;
    let policy = PolicyHandle::new(policy);
    let directory = directory.map(Arc::new);
    let host_key = match &directory {
        Some(directory) => {
            let (directory, data_dir) = (Arc::clone(directory), config.data_dir.clone());
            tokio::task::spawn_blocking(move || {
                hostkey::load_or_share(&data_dir, |candidate| {
                    Ok(directory.shared_host_key(candidate)?)
                })
            })
            .await
            .context("loading the host key")??
        }
        None => hostkey::load_or_create(&config.data_dir)?,
    };
    let enrollment = config
        .enrollment_key
        .as_deref()
        .map(EnrollmentKey::load_or_create)
        .transpose()?
        .map(Arc::new);
    let fingerprint = hostkey::fingerprint(&host_key);
    let api_cert = config
        .api_tls
        .as_ref()
        .map(|tls| api::cert::load(tls, &config.data_dir, config.api_listen))
        .transpose()?;
    let live_cert = api_cert
        .map(|c| c.certified_key().map(|k| Arc::new(LiveCert::new(k))))
        .transpose()?;
    let api_tls = live_cert
        .clone()
        .map(api::live_cert::server_config)
        .transpose()?;

    let ssh_listener = TcpListener::bind(config.ssh_listen)
        .await
        .with_context(|| format!("binding ssh_listen {}", config.ssh_listen))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding api_listen {}", config.api_listen))?;
    // Bound with the others, so a taken port fails the start rather than the first scrape.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?,
        ),
        None => None,
    };
    let peer_listener = match config.cluster.peer_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding cluster.peer_listen {addr}"))?,
        ),
        None => None,
    };
    let ssh_addr = ssh_listener
        .local_addr()
        .context("reading the SSH address")?;
    let api_addr = api_listener
        .local_addr()
        .context("reading the API address")?;

    let shutdown = CancellationToken::new();
    let audit = AuditQueue::start(Arc::clone(&store)).context("starting the audit writer")?;
    let mut relay = Relay::new(
        Arc::clone(&store),
        audit.clone(),
        policy.clone(),
        host_key,
        ssh::Limits::from(&config),
    );
    let mut peering = match (peer_listener, directory) {
        (Some(listener), Some(directory)) => {
            let peer = join_cluster(&config, listener, directory).await?;
            relay.cluster = Some(Arc::clone(&peer.cluster));
            Some(peer)
        }
        _ => None,
    };
    let relay = Arc::new(relay);
    let rechecks = ssh::revoke::spawn_policy_rechecks(Arc::clone(&relay), shutdown.clone());
    let watcher = watch::spawn_watcher(
        config.policies_dir.clone(),
        policy.clone(),
        shutdown.clone(),
    );
    // Configured files are renewed elsewhere (ACME); a self-signed pair is the jump host's own.
    let cert_reloader =
        match (&config.api_tls, live_cert.clone()) {
            (Some(ApiTls::Files { cert, key }), Some(live)) => Some(
                api::live_cert::spawn_reloader(cert.clone(), key.clone(), live, shutdown.clone()),
            ),
            _ => None,
        };
    let admin_task = tokio::spawn(admin::serve(
        admin_socket,
        admin::socket_path(&config.data_dir),
        Arc::clone(&relay),
        live_cert.clone(),
        shutdown.clone(),
    ));
    let metrics_task = match metrics_listener {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .context("reading the metrics address")?;
            let handle = crate::metrics::endpoint::install()?;
            let task = tokio::spawn(crate::metrics::endpoint::serve(
                listener,
                handle,
                Arc::clone(&relay),
                live_cert.clone(),
                shutdown.clone(),
            ));
            Some((addr, task))
        }
        None => None,
    };
    let sweeper = tokio::spawn(sweep(Arc::clone(&store), shutdown.clone()));
    let peer_tasks = peering.as_mut().and_then(|peer| {
        let cluster = &peer.cluster;
        let listener = peer.listener.take()?;
        Some((
            tokio::spawn(crate::cluster::lease::keep(
                Arc::clone(&relay),
                Arc::clone(cluster),
                shutdown.clone(),
            )),
            tokio::spawn(crate::cluster::peer_server::serve(
                listener,
                Arc::clone(&relay),
                Arc::clone(cluster),
                shutdown.clone(),
            )),
        ))
    });
    let mut ssh_task = tokio::spawn(ssh::server::serve(
        ssh_listener,
        Arc::clone(&relay),
        shutdown.clone(),
    ));
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    let proxy_headers = config.proxy_protocol.then(|| api::ProxyHeaders {
        trusted: config.trusted_proxies.clone(),
        timeout: assist_proto::limits::HEADER_TIMEOUT,
    });
    let api_task = tokio::spawn(api::serve(
        api_listener,
        api_tls,
        proxy_headers,
        ApiState {
            store: Arc::clone(&store),
            policy,
            limiter: Default::default(),
            enrollment: enrollment.clone(),
            ssh: Some(api::ssh_ws::SshOverWs {
                relay: Arc::clone(&relay),
                shutdown: shutdown.clone(),
            }),
            trusted_proxies: config.trusted_proxies.clone(),
        },
        shutdown.clone(),
    ));

    let warnings = [
        config::plain_api_warning(api_addr, config.api_tls.is_some()),
        enrollment
            .is_none()
            .then(|| config::NO_ENROLLMENT_WARNING.to_owned()),
    ];
    for warning in warnings.into_iter().flatten() {
        // Loud on purpose: on stderr even when RUST_LOG hides warnings, and in the log.
        eprintln!("WARNING: {warning}");
        tracing::warn!("{warning}");
    }
    let mut ready = vec![
        format!("store: {backend} (node {node})"),
        format!("host key fingerprint: {fingerprint}"),
    ];
    if let Some(api_fp) = live_cert.as_ref().and_then(|c| c.fingerprint()) {
        ready.push(format!("api tls certificate fingerprint: {api_fp}"));
    }
    if let Some(peer) = &peering {
        ready.push(format!(
            "node key fingerprint: {}",
            peer.cluster.fingerprint()
        ));
        ready.push(format!(
            "peer listening on {} (advertised as {})",
            peer.bound, peer.advertised
        ));
    }
    ready.push(format!("ssh listening on {ssh_addr}"));
    ready.push(format!("api listening on {scheme}://{api_addr}"));
    if let Some((addr, _)) = &metrics_task {
        ready.push(format!("metrics listening on http://{addr}/metrics"));
    }
    print_ready(&ready)?;
    tracing::info!(%ssh_addr, %api_addr, %fingerprint, api_scheme = scheme, "jump host ready");

    // The SSH server only stops on its own after a fatal error; then the process exits
    // rather than serving the API alone.
    let stopped_early = tokio::select! {
        signal = wait_for_signal() => {
            tracing::info!(signal = signal?, "shutting down");
            None
        }
        done = &mut ssh_task => Some(done),
    };
    shutdown.cancel();

    let ssh_result = match stopped_early {
        Some(done) => done,
        None => ssh_task.await,
    }
    .context("SSH server task")?;
    let api_result = api_task.await.context("API server task")?;
    relay.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, relay.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = relay.tasks.len(),
            "connections still open after the grace time; dropping them"
        );
    }
    let _ = watcher.await;
    let _ = rechecks.await;
    audit.flush().await;
    if let Some(reloader) = cert_reloader {
        let _ = reloader.await;
    }
    let _ = sweeper.await;
    if let Some((leases, peer_server)) = peer_tasks {
        let _ = leases.await;
        peer_server
            .await
            .context("peer listener task")?
            .context("peer listener")?;
    }
    let _ = admin_task.await;
    if let Some((_, task)) = metrics_task {
        task.await
            .context("metrics task")?
            .context("metrics endpoint")?;
    }
    ssh_result.context("SSH server")?;
    api_result.context("registration API")?;
    Ok(())
}

/// Opens the store (and on PostgreSQL the cluster's directory in the same database) and
/// closes the hops this node's previous run left open. On the blocking pool: connecting to
/// a database and migrating block.
async fn open_store(
    backend: Backend,
    node: String,
) -> anyhow::Result<(Arc<dyn Store>, Option<Directory>, usize)> {
    tokio::task::spawn_blocking(move || {
        let context = || match &backend {
            Backend::Sqlite(dir) => format!("opening the store in {}", dir.display()),
            Backend::Postgres(url) => format!("opening the store (key database = \"{url}\")"),
        };
        let (store, directory): (Arc<dyn Store>, _) = match &backend {
            Backend::Postgres(url) => {
                let pg = PgStore::open(url, &node).with_context(context)?;
                let directory = pg.directory();
                (Arc::new(pg), Some(directory))
            }
            Backend::Sqlite(_) => (store::open(&backend, &node).with_context(context)?, None),
        };
        let interrupted = store
            .close_interrupted_hops(SystemTime::now())
            .context("closing hops a previous run left open")?;
        Ok((store, directory, interrupted))
    })
    .await
    .context("opening the store")?
}

/// This node's membership of the cluster, ready to serve.
struct Peering {
    cluster: Arc<Cluster>,
    /// Until the peer server takes it.
    listener: Option<TcpListener>,
    bound: std::net::SocketAddr,
    advertised: String,
}

/// Loads the node key and publishes this node (its advertised peer address and key) so the
/// other nodes can reach it and let it in.
async fn join_cluster(
    config: &JumphostConfig,
    listener: TcpListener,
    directory: Arc<Directory>,
) -> anyhow::Result<Peering> {
    let bound = listener.local_addr().context("reading the peer address")?;
    let advertised = config
        .cluster
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let cluster = Arc::new(Cluster::new(directory, &config.data_dir)?);
    let public = cluster.key.public_key().clone();
    let address = advertised.clone();
    cluster
        .call(move |d| d.publish(&address, &public))
        .await
        .context("publishing this node in the cluster's database")?;
    Ok(Peering {
        cluster,
        listener: Some(listener),
        bound,
        advertised,
    })
}

/// The ready lines on stdout are a contract with the tests and operators' scripts.
fn print_ready(lines: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").context("writing the ready lines")?;
    }
    out.flush().context("writing the ready lines")
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn sweep(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store::blocking(&store, |s| s.sweep_expired(SystemTime::now())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired device keys swept"),
            Err(e) => tracing::error!(error = %e, "sweeping expired keys failed"),
        }
    }
}
