//! Wires the actors together and runs them: SIP transport, XMPP component, registry.

use crate::component::{ComponentConfig, XmppComponent};
use crate::config::Config;
use crate::messages::ComponentStatus;
use crate::messages::Restore;
use crate::registry::{Mode, Registry, RegistryConfig};
use crate::store::{load_snapshot, SqliteStore, StoreHandle};
use crate::transport::{SipTransport, TransportConfig};
use actix::prelude::*;
use pua_xmpp::address::{AddressMapper, MappingConfig};
use pua_xmpp::notifier::NotifierConfig;
use pua_xmpp::pua::PuaConfig;
use pua_xmpp::publisher::PublisherConfig;
use pua_xmpp::subscriber::SubscriberConfig;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Tracks whether the component link is up (for logs now, `/health` later).
pub struct LinkStatus {
    pub online: bool,
}

impl Actor for LinkStatus {
    type Context = Context<Self>;
}

/// Asks whether the component link is up.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct GetLinkStatus;

impl Handler<GetLinkStatus> for LinkStatus {
    type Result = bool;
    fn handle(&mut self, _: GetLinkStatus, _: &mut Context<Self>) -> bool {
        self.online
    }
}

impl Handler<ComponentStatus> for LinkStatus {
    type Result = ();
    fn handle(&mut self, msg: ComponentStatus, _: &mut Context<Self>) {
        if msg.online != self.online {
            tracing::info!(online = msg.online, "XMPP component link");
        }
        self.online = msg.online;
    }
}

/// Resolves `sip:host[:port]` of `sip.server_address` to a socket address.
async fn resolve_sip_uri(uri: &str) -> io::Result<SocketAddr> {
    let hp = pua_xmpp::sip::encode::uri_host_port(uri)
        .ok_or_else(|| invalid(format!("sip.server_address: not a SIP URI: {uri}")))?;
    let host = hp
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = hp.port.unwrap_or(5060);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
    let first = addrs.next();
    first.ok_or_else(|| invalid(format!("sip.server_address: {uri} does not resolve")))
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// What the caller keeps of a started gateway: the store, to flush it at shutdown.
pub struct Running {
    pub store: StoreHandle,
}

/// Starts every actor inside the current actix system, after restoring the persisted state.
pub async fn start(config: &Config) -> io::Result<Running> {
    crate::http::install_metrics();
    let store_path = std::path::Path::new(&config.store.path);
    let snapshot = load_snapshot(store_path).map_err(|e| invalid(format!("store.path: {e}")))?;
    let sqlite = SqliteStore::open(store_path).map_err(|e| invalid(format!("store.path: {e}")))?;
    let (store, _writer) = StoreHandle::start(Box::new(sqlite));
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
    let proxy = resolve_sip_uri(&config.sip.server_address).await?;
    let contact_host = if config.sip.contact_host.is_empty() {
        // With TCP chosen, say so in the Contact, or peers would NOTIFY us over UDP (RFC 3263).
        match config.sip.transport.as_str() {
            "tcp" => format!("{listen};transport=tcp"),
            _ => listen.to_string(),
        }
    } else {
        config.sip.contact_host.clone()
    };
    let mode = if config.presence.mode == "pua" {
        Mode::Pua
    } else {
        Mode::Notifier
    };

    let reg_ctx = Context::<Registry>::new();
    let registry = reg_ctx.address();
    let transport = SipTransport::bind(
        TransportConfig {
            listen,
            outbound_proxy: Some(proxy),
            request_transport: if config.sip.transport == "tcp" {
                crate::messages::Transport::Tcp
            } else {
                crate::messages::Transport::Udp
            },
            max_message: config.limits.max_sip_message,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        },
        registry.clone().recipient(),
    )
    .await?;
    tracing::info!(%listen, proxy = %proxy, "SIP transport listening (UDP and TCP)");
    let status = LinkStatus { online: false }.start();
    let component = XmppComponent::start(
        ComponentConfig::from_xmpp(&config.xmpp),
        registry.clone().recipient(),
        status.clone().recipient(),
    );
    let mut subscriber = SubscriberConfig::new(
        config.presence.subscribe_expires,
        &contact_host,
        &listen.ip().to_string(),
    );
    subscriber.max_body = config.limits.max_pidf_body;
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
    };
    let notifier = NotifierConfig {
        min_interval: Duration::from_secs(config.presence.notify_min_interval_secs),
        contact_host,
        ..NotifierConfig::default()
    };
    let reg = Registry::new(
        RegistryConfig {
            mode,
            subscriber,
            notifier,
            pua,
            seed: seed(),
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
        transport.clone().recipient(),
        transport.recipient(),
        component.recipient(),
        store.clone(),
    );
    // One worker arbiter (thread) per core beyond the main one, for the translators.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<actix::ArbiterHandle> = (1..cores.max(2))
        .map(|_| actix::Arbiter::new().handle())
        .collect();
    let registry_addr = reg_ctx.run(reg.with_workers(workers));
    registry_addr.do_send(Restore(snapshot));
    let http_listen: SocketAddr = config
        .http
        .listen
        .parse()
        .map_err(|e| invalid(format!("http.listen: {e}")))?;
    crate::http::start(http_listen, registry, status.clone())?;
    tracing::info!(%http_listen, "HTTP listening");
    Ok(Running { store })
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(config: Config) -> io::Result<()> {
    let sys = actix_rt::System::new();
    let grace = Duration::from_secs(10);
    sys.block_on(async {
        let running = start(&config).await?;
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: flushing the store");
            // The store thread commits what the actors sent so far; bounded wait.
            let store = running.store.clone();
            let flushed = tokio::task::spawn_blocking(move || store.flush_timeout(grace)).await;
            match flushed {
                Ok(Ok(())) => tracing::info!("store flushed"),
                Ok(Err(e)) => tracing::error!(error = %e, "store flush failed at shutdown"),
                Err(e) => tracing::error!(error = %e, "store flush task failed"),
            }
            System::current().stop();
        });
        Ok::<(), io::Error>(())
    })?;
    sys.run()
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
