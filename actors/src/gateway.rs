//! Wires the actors together and runs them: SIP transport, XMPP component, registry; and stops
//! them gracefully on SIGTERM/SIGINT within `runtime.shutdown_timeout_secs`.

use crate::component::{CloseOutcome, CloseStream, ComponentConfig, StopInbound, XmppComponent};
use crate::config::Config;
use crate::link_status::LinkStatus;
use crate::messages::StopLinkStatus;
use crate::messages::{FlushPersists, Restore};
use crate::registry::{Mode, Registry, RegistryConfig};
use crate::store::{open_configured, Fence, StoreHandle};
use crate::transport::tls::{self, TlsSettings};
use crate::transport::{GetStats, ReloadTls, SipTransport, TransportConfig};
use actix::prelude::*;
use pua_xmpp::address::{AddressMapper, MappingConfig};
use pua_xmpp::notifier::NotifierConfig;
use pua_xmpp::pua::PuaConfig;
use pua_xmpp::publisher::PublisherConfig;
use pua_xmpp::subscriber::SubscriberConfig;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The RFC 3263 locator settings of `sip.server_address` (a name or an IP literal).
fn locator_config(config: &Config, listen: SocketAddr) -> crate::locator::LocatorConfig {
    use pua_xmpp::locate::{LocateConfig, Proto};
    let mut transports = match config.sip.effective_transport() {
        "tls" => vec![Proto::Tls],
        "tcp" => vec![Proto::Tcp, Proto::Udp],
        _ => vec![Proto::Udp, Proto::Tcp],
    };
    // TLS targets (NAPTR `SIPS+D2T`, `_sips._tcp`) only with a TLS listener for their
    // in-dialog requests back to us.
    if config.sip.tls_listen_addr().is_some() && !transports.contains(&Proto::Tls) {
        transports.push(Proto::Tls);
    }
    let mut locate = LocateConfig::new(&config.sip.server_address, transports);
    // The transport sends from its one socket: only addresses of its family are reachable.
    let any = listen.ip().is_unspecified();
    locate.ipv4 = listen.is_ipv4() || any;
    locate.ipv6 = listen.is_ipv6();
    // A failed target stays at the back for a Timer F.
    locate.blacklist_for = Duration::from_millis(config.sip.t1_ms) * 64;
    crate::locator::LocatorConfig {
        locate,
        dns_servers: config
            .sip
            .dns_servers
            .iter()
            .filter_map(|d| crate::config::parse_dns_server(d))
            .collect(),
    }
}

/// The TLS settings of `[sip]`: the listener's certificate and key (a start-up error naming
/// the key when they do not load) and how outbound connections verify peers.
fn tls_settings(sip: &crate::config::SipConfig) -> io::Result<Option<TlsSettings>> {
    let listen = sip.tls_listen_addr();
    let server = match listen {
        Some(_) => Some(
            tls::server_config(Path::new(&sip.tls_cert), Path::new(&sip.tls_key))
                .map_err(|e| invalid(format!("sip.tls_cert / sip.tls_key: {e}")))?,
        ),
        None => None,
    };
    let ca = (!sip.tls_ca.is_empty()).then(|| Path::new(&sip.tls_ca));
    if !sip.tls_verify {
        tracing::warn!(
            "sip.tls_verify = false: the certificates of TLS peers are NOT verified; \
             anyone on the path can impersonate them (for labs only)"
        );
    }
    let client = match tls::client_config(ca, sip.tls_verify) {
        Ok(c) => c,
        Err(e) if sip.outbound_tls() || ca.is_some() => {
            return Err(invalid(format!("sip.tls_ca: {e}")));
        }
        Err(e) => {
            // Nothing we originate needs it; a route that asks for TLS will fail, saying so.
            tracing::warn!(error = %e, "no CA certificates for outbound SIP over TLS");
            match listen {
                None => return Ok(None),
                Some(_) => tls::client_config(None, false)
                    .map_err(|e| invalid(format!("sip.tls_ca: {e}")))?,
            }
        }
    };
    Ok(Some(TlsSettings {
        listen,
        server,
        client,
    }))
}

/// On SIGHUP, reads again what the TLS side was built from: `sip.tls_cert` and `sip.tls_key`
/// (with a TLS listener) and `sip.tls_ca` (when set: a renewed CA bundle for outbound
/// connections), and hands them to the transport. Whatever does not load keeps its old
/// version (and the error is logged); the rest is replaced.
fn spawn_tls_reload(sip: &crate::config::SipConfig, transport: Addr<SipTransport>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let listener = sip.tls_listen_addr().map(|_| {
            (
                std::path::PathBuf::from(&sip.tls_cert),
                std::path::PathBuf::from(&sip.tls_key),
            )
        });
        let ca = (!sip.tls_ca.is_empty()).then(|| std::path::PathBuf::from(&sip.tls_ca));
        let verify = sip.tls_verify;
        if listener.is_none() && ca.is_none() {
            return;
        }
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP: TLS certificates are not reloadable");
                return;
            }
        };
        actix_rt::spawn(async move {
            while hup.recv().await.is_some() {
                let server = listener.as_ref().and_then(|(cert, key)| {
                    tls::server_config(cert, key)
                        .map_err(|e| {
                            metrics::counter!("pua_xmpp_sip_tls_reload_failures_total").increment(1);
                            tracing::error!(error = %e, "SIGHUP: TLS certificate or key does not load; keeping the old ones");
                        })
                        .ok()
                });
                let client = ca.as_ref().and_then(|ca| {
                    tls::client_config(Some(ca), verify)
                        .map_err(|e| {
                            metrics::counter!("pua_xmpp_sip_tls_reload_failures_total").increment(1);
                            tracing::error!(error = %e, "SIGHUP: sip.tls_ca does not load; keeping the old CA certificates");
                        })
                        .ok()
                });
                if server.is_some() || client.is_some() {
                    transport.do_send(ReloadTls { server, client });
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (sip, transport);
    }
}

/// Gives the identifier generators of this process their key, from the OS (issue 14: Call-IDs,
/// tags and branches must be unpredictable and never repeat across restarts).
pub fn install_id_key() -> io::Result<()> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(format!("OS randomness: {e}")))?;
    let (a, b) = buf.split_at(8);
    let word = |s: &[u8]| s.iter().fold(0u64, |w, &x| (w << 8) | u64::from(x));
    pua_xmpp::ids::install_key(word(a), word(b));
    Ok(())
}

/// What the caller keeps of a started gateway: what [`shutdown`] needs.
pub struct Running {
    pub store: StoreHandle,
    /// To have the shards write the records they hold back ([`FlushPersists`]).
    pub registry: Addr<Registry>,
    pub transport: Addr<SipTransport>,
    pub component: Addr<XmppComponent>,
    pub status: Addr<LinkStatus>,
}

/// Starts every actor inside the current actix system, after restoring the persisted state.
pub async fn start(config: &Config) -> io::Result<Running> {
    start_fenced(config, None).await
}

/// [`start`] for the active instance of an active/standby pair: every store batch carries
/// `fence` (`store.lease`, issue 17).
pub async fn start_fenced(config: &Config, fence: Option<Fence>) -> io::Result<Running> {
    install_id_key()?;
    crate::http::install_metrics();
    let http_fence = fence.clone();
    let (backend, snapshot) = open_configured(
        &config.store.path,
        &config.store.url,
        config.store.pool_size,
        fence,
    )
    .map_err(|e| {
        let key = if config.store.url.is_empty() {
            "store.path"
        } else {
            "store.url"
        };
        invalid(format!("{key}: {e}"))
    })?;
    let (store, _writer) = StoreHandle::start(backend);
    let mapping = MappingConfig {
        separator: config
            .mapping
            .domain_separator
            .chars()
            .next()
            .unwrap_or('*'),
        component_domain: config.xmpp.component_domain.clone(),
        gateway_domain: config.sip.gateway_domain.clone(),
        gwmap: config
            .mapping
            .gwmap
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
            })
            .collect(),
        allowed_sip_domains: config.mapping.allowed_sip_domains.clone(),
        allowed_xmpp_domains: config.mapping.allowed_xmpp_domains.clone(),
    };
    let mapper = AddressMapper::new(mapping).map_err(|e| invalid(format!("mapping: {e}")))?;
    let listen: SocketAddr = config
        .sip
        .listen
        .parse()
        .map_err(|e| invalid(format!("sip.listen: {e}")))?;
    let transport_name = config.sip.effective_transport();
    let (located, targets) = crate::locator::Locator::prime(locator_config(config, listen)).await?;
    let proxy = targets.first().copied();
    let tls = tls_settings(&config.sip)?;
    let contact_host = if config.sip.contact_host.is_empty() {
        // With TCP or TLS chosen, say so in the Contact, or peers would NOTIFY us over UDP
        // (RFC 3263); over TLS the Contact is the TLS listener.
        let at = match (transport_name, tls.as_ref().and_then(|t| t.listen)) {
            ("tls", Some(tls_listen)) => tls_listen,
            _ => listen,
        };
        pua_xmpp::sip::encode::contact_hostport(at, transport_name)
    } else {
        config.sip.contact_host.clone()
    };
    let proxy_name = pua_xmpp::sip::encode::uri_host_port(&config.sip.server_address).map(|hp| {
        hp.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let mode = if config.presence.mode == "pua" {
        Mode::Pua
    } else {
        Mode::Notifier
    };

    let reg_ctx = Context::<Registry>::new();
    let registry = reg_ctx.address();
    let transport = SipTransport::bind_batched(
        TransportConfig {
            listen,
            outbound_proxy: proxy.map(|p| p.0),
            outbound_proxy_name: proxy_name,
            tls: tls.clone(),
            request_transport: match proxy {
                Some((_, t)) => t,
                None if transport_name == "tcp" => crate::messages::Transport::Tcp,
                None if transport_name == "tls" => crate::messages::Transport::Tls,
                None => crate::messages::Transport::Udp,
            },
            max_message: config.limits.max_sip_message,
            t1: Duration::from_millis(config.sip.t1_ms),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        },
        registry.clone().recipient(),
        Some(registry.clone().recipient()),
    )
    .await?;
    tracing::info!(%listen, proxy = ?proxy, transport = transport_name, "SIP transport listening (UDP and TCP)");
    if let Some(tls_listen) = tls.as_ref().and_then(|t| t.listen) {
        tracing::info!(%tls_listen, "SIP transport listening (TLS)");
    }
    if tls.is_some() {
        spawn_tls_reload(&config.sip, transport.clone());
    }
    crate::locator::Locator::start_with(located, transport.clone().recipient());
    let status = LinkStatus {
        online: false,
        registry: Some(registry.clone().recipient()),
    }
    .start();
    let transport_addr = transport.clone();
    let mut im = config.im_config();
    im.tcp_available = true;
    let component = XmppComponent::start_with_messages(
        {
            let c = ComponentConfig::from_xmpp(&config.xmpp)
                .with_max_stanza(config.limits.max_stanza_bytes);
            // a lease holder retries a `conflict` (the old leader's connection) within seconds
            if config.store.lease {
                c.with_lease()
            } else {
                c
            }
        },
        registry.clone().recipient(),
        Some(registry.clone().recipient()),
        im.enabled.then(|| registry.clone().recipient()),
        status.clone().recipient(),
    );
    let mut subscriber = SubscriberConfig::new(
        config.presence.subscribe_expires,
        &contact_host,
        &listen.ip().to_string(),
    );
    subscriber.max_body = config.limits.max_pidf_body;
    subscriber.max_status_chars = config.limits.max_status_chars;
    let pua = PuaConfig {
        publisher: PublisherConfig {
            expires: config.presence.subscribe_expires,
            call_id_host: listen.ip().to_string(),
            ..PublisherConfig::default()
        },
        winfo_expires: config.presence.subscribe_expires,
        contact_host: contact_host.clone(),
        call_id_host: listen.ip().to_string(),
        max_body: config.limits.max_pidf_body,
        max_status_chars: config.limits.max_status_chars,
    };
    let notifier = NotifierConfig {
        min_interval: Duration::from_secs(config.presence.notify_min_interval_secs),
        contact_host,
        max_status_chars: config.limits.max_status_chars,
        ..NotifierConfig::default()
    };
    let reg = Registry::new(
        RegistryConfig {
            mode,
            subscriber,
            notifier,
            pua,
            persist_delay: Duration::from_millis(config.store.coalesce_ms),
            im,
            limits: crate::registry::Limits {
                trusted_peers: config
                    .sip
                    .trusted_peers
                    .iter()
                    .filter_map(|ip| ip.parse().ok())
                    .collect(),
                max_subscriptions: config.limits.max_subscriptions,
                max_per_user: config.limits.max_subscriptions_per_user,
            },
        },
        mapper,
        crate::registry::Peers {
            requests: transport.clone().recipient(),
            responses: transport.clone().recipient(),
            response_batches: transport.recipient(),
            stanzas: component.clone().recipient(),
            stanza_batches: component.clone().recipient(),
            messages: component.clone().recipient(),
        },
        store.clone(),
    );
    // Worker arbiters (threads) for the shards and translators, beyond the main thread: by
    // default one per core beyond the main one.
    let threads = match config.runtime.threads {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(2),
        n => n as usize,
    };
    let workers: Vec<actix::ArbiterHandle> = (1..threads)
        .map(|_| actix::Arbiter::new().handle())
        .collect();
    let registry_addr = reg_ctx.run(reg.with_workers(workers));
    registry_addr.do_send(Restore(snapshot));
    let http_listen: SocketAddr = config
        .http
        .listen
        .parse()
        .map_err(|e| invalid(format!("http.listen: {e}")))?;
    crate::http::start(
        http_listen,
        &config.http,
        registry,
        status.clone(),
        store.clone(),
        http_fence,
    )?;
    tracing::info!(%http_listen, "HTTP listening");
    Ok(Running {
        store,
        registry: registry_addr,
        transport: transport_addr,
        component,
        status,
    })
}

/// How long [`shutdown`] polls the transport between two looks at its transaction count.
const TXN_POLL: Duration = Duration::from_millis(20);
/// Longest wait for the server's `</stream:stream>`: a dead server must not eat the budget.
const MAX_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The store flush always gets at least this, even when the earlier steps used the budget up.
const MIN_FLUSH: Duration = Duration::from_millis(200);

/// Whether every step of [`shutdown`] completed in its share of the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Client transactions still open when the wait for them ended (0: all finished).
    pub client_txns_left: usize,
    pub stream: CloseOutcome,
    /// `None` when the store committed everything; else why not.
    pub store_error: Option<String>,
}

/// Graceful shutdown in four logged steps, bounded by `timeout` (plus at most [`MIN_FLUSH`]):
/// 1. stop new work: inbound XMPP stanzas are no longer forwarded, `/health` says 503;
/// 2. wait until the SIP transport has no client transaction, for at most half the budget
///    (SIP requests keep being answered meanwhile, so in-flight dialogs complete);
/// 3. close the XEP-0114 stream: queued stanzas, then `</stream:stream>`;
/// 4. flush the store with what is left of the budget.
///
/// The caller stops the actix system afterwards.
pub async fn shutdown(running: &Running, timeout: Duration) -> ShutdownReport {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    running.component.do_send(StopInbound);
    running.status.do_send(StopLinkStatus);
    tracing::info!(
        timeout_secs = timeout.as_secs_f64(),
        "shutdown 1/4: no new work (inbound XMPP presence no longer forwarded, /health 503)"
    );

    let txn_deadline = started + timeout / 2;
    let left = loop {
        let left = match running.transport.send(GetStats).await {
            Ok(stats) => stats.client_txns,
            Err(e) => {
                tracing::warn!(error = %e, "shutdown: SIP transport not answering");
                break 0;
            }
        };
        if left == 0 || tokio::time::Instant::now() >= txn_deadline {
            break left;
        }
        tokio::time::sleep(TXN_POLL).await;
    };
    if left == 0 {
        tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "shutdown 2/4: no SIP client transaction in flight"
        );
    } else {
        tracing::warn!(
            client_txns = left,
            waited_ms = started.elapsed().as_millis() as u64,
            "shutdown 2/4: gave up waiting for SIP client transactions"
        );
    }

    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let close_wait = (remaining / 4).min(MAX_CLOSE_WAIT);
    let stream = match running
        .component
        .send(CloseStream {
            timeout: close_wait,
        })
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => CloseOutcome::WriteFailed(format!("component actor gone: {e}")),
    };
    match &stream {
        CloseOutcome::Closed {
            flushed,
            server_closed,
            dropped_inbound,
        } => tracing::info!(
            flushed_stanzas = flushed,
            server_closed,
            dropped_inbound,
            "shutdown 3/4: XMPP stream closed (</stream:stream> sent)"
        ),
        CloseOutcome::NotConnected { queued } => tracing::warn!(
            lost_stanzas = queued,
            "shutdown 3/4: XMPP component was not connected; nothing to close"
        ),
        CloseOutcome::WriteFailed(e) => {
            tracing::warn!(error = %e, "shutdown 3/4: could not close the XMPP stream")
        }
        CloseOutcome::TimedOut => {
            tracing::warn!("shutdown 3/4: XMPP stream close timed out; connection dropped")
        }
    }

    // The shards hand over the records they hold back for coalescing; then the store thread
    // commits what the actors sent so far.
    if let Err(e) = running.registry.send(FlushPersists).await {
        tracing::warn!(error = %e, "shutdown: registry not answering; held-back records lost");
    }
    // The flush waits on a std thread, not spawn_blocking: the runtime would wait for a blocking task at exit.
    let budget = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(MIN_FLUSH);
    let store = running.store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("store-flush".to_owned())
        .spawn(move || {
            let _ = tx.send(store.flush_timeout(budget));
        });
    let store_error = match spawned {
        Err(e) => Some(format!("could not start the flush thread: {e}")),
        Ok(_) => match rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("flush thread ended without an answer".to_owned()),
        },
    };
    match &store_error {
        None => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown 4/4: store flushed; exiting"
        ),
        Some(e) => tracing::error!(
            error = %e,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown 4/4: store flush failed; exiting (changes since the last commit are lost)"
        ),
    }
    ShutdownReport {
        client_txns_left: left,
        stream,
        store_error,
    }
}

/// Runs the gateway until SIGINT or SIGTERM, then shuts down gracefully within
/// `runtime.shutdown_timeout_secs`. A second signal, or a shutdown that overruns the budget
/// by a second, exits the process at once with status 1.
pub fn run(config: Config) -> io::Result<()> {
    // Active/standby: a standby binds and connects nothing until it holds the lease.
    let (fence, lease) = if config.store.lease {
        let holder = if config.store.instance.is_empty() {
            crate::store::lease_driver::holder_name()
        } else {
            config.store.instance.clone()
        };
        // A standby answers GET /health only (over HTTPS when http.tls_cert is set), from
        // what the lease thread hears of the database; stopped before the real API binds.
        let lease_cfg = config.store.lease_config();
        let status = crate::store::lease_driver::LeaseStatus::new(lease_cfg.ttl);
        let tls = if config.http.tls_cert.is_empty() {
            None
        } else {
            let c = crate::http::tls::server_config(&config.http.tls_cert, &config.http.tls_key)
                .map_err(invalid)?;
            Some(std::sync::Arc::new(c))
        };
        let standby_health = match config.http.listen.parse() {
            Ok(listen) => crate::http::StandbyHealth::serve(listen, tls, status.clone())
                .map_err(|e| tracing::warn!(%listen, error = %e, "standby: cannot serve /health"))
                .ok(),
            Err(_) => None,
        };
        let f = crate::store::lease_driver::wait_until_active(
            &config.store.url,
            &config.xmpp.component_domain,
            &holder,
            lease_cfg,
            status,
        )
        .map_err(|e| invalid(format!("store.lease: {e}")))?;
        if let Some(h) = standby_health {
            h.stop();
        }
        (Some(f.0), Some(f.1))
    } else {
        (None, None)
    };
    let sys = actix_rt::System::new();
    let timeout = config.runtime.shutdown_timeout();
    sys.block_on(async {
        // Installed before anything starts: a signal during start-up must not kill the
        // process with the default action.
        let mut signals = Signals::install();
        let running = start_fenced(&config, fence).await?;
        actix_rt::spawn(async move {
            signals.recv().await;
            tracing::info!("signal received: shutting down");
            std::thread::Builder::new()
                .name("shutdown-watchdog".to_owned())
                .spawn(move || {
                    std::thread::sleep(timeout + Duration::from_secs(1));
                    tracing::error!("shutdown overran runtime.shutdown_timeout_secs: exiting now");
                    std::process::exit(1);
                })
                .map_err(|e| tracing::error!(error = %e, "could not start the shutdown watchdog"))
                .ok();
            actix_rt::spawn(async move {
                signals.recv().await;
                tracing::warn!("second signal: exiting now without finishing the shutdown");
                std::process::exit(1);
            });
            shutdown(&running, timeout).await;
            System::current().stop();
        });
        Ok::<(), io::Error>(())
    })?;
    let r = sys.run();
    // After the shutdown flushed the store: the standby may take over at once.
    if let Some(lease) = lease {
        lease.release(Duration::from_secs(2));
    }
    r
}

/// SIGTERM and SIGINT, registered when created.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| tracing::error!(error = %e, "cannot handle SIGTERM"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .map_err(|e| tracing::error!(error = %e, "cannot handle SIGINT"))
                .ok();
            Signals { term, int }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
