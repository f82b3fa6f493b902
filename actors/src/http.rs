//! The HTTP listener (`http.listen`): the PUA-mode hook `POST /pua/req_winfo` that a Kamailio
//! route calls with `http_client_query`, `GET /metrics`, `GET /subscriptions` and the open
//! `GET /health`. Access to all but `/health` is limited by [`access`] (`http.allow`,
//! `http.token`); [`tls`] serves it over HTTPS when `http.tls_cert` is set.

pub mod access;
pub mod tls;

use crate::link_status::LinkStatus;
use crate::messages::GetLinkStatus;
use crate::messages::ReqWinfo;
use crate::registry::Registry;
use actix::Addr;
use actix_web::{web, App, HttpResponse, HttpServer};
use std::collections::HashMap;
use std::net::SocketAddr;

struct State {
    registry: Addr<Registry>,
    link: Addr<LinkStatus>,
    store: crate::store::StoreHandle,
    /// The lease fence of an active instance (`store.lease`, issue 17); `/health` shows it.
    fence: Option<crate::store::postgres::Fence>,
}

/// The Prometheus recorder of this process (installed once; tests start several gateways).
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            32.0,
        ];
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&buckets)
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| {
                metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()
            });
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows this one's view"
            );
        }
        handle
    })
}

/// Every metric family with its help text, exported from the start (at zero) so that
/// dashboards and alerts see them before the first event: (kind, name, help, labels of the
/// series made at zero).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const FAMILIES: &[Family] = &[
    (
        "counter",
        "pua_xmpp_im_messages_total",
        "Instant messages by direction (xmpp_to_sip, sip_to_xmpp) and result (delivered, refused, error).",
        &[("direction", "xmpp_to_sip"), ("result", "delivered")],
    ),
    (
        "gauge",
        "pua_xmpp_subscriptions",
        "Live subscriptions by direction and state.",
        &[("direction", "xmpp_to_sip"), ("state", "active")],
    ),
    (
        "counter",
        "pua_xmpp_sip_requests_in_total",
        "SIP requests received, by method.",
        &[("method", "NOTIFY")],
    ),
    (
        "counter",
        "pua_xmpp_sip_requests_out_total",
        "SIP requests sent, by method.",
        &[("method", "SUBSCRIBE")],
    ),
    (
        "counter",
        "pua_xmpp_sip_responses_in_total",
        "SIP responses received, by code.",
        &[("code", "200")],
    ),
    (
        "counter",
        "pua_xmpp_sip_responses_out_total",
        "SIP responses sent, by code.",
        &[("code", "200")],
    ),
    (
        "counter",
        "pua_xmpp_stanzas_in_total",
        "Presence stanzas received, by type.",
        &[("type", "available")],
    ),
    (
        "counter",
        "pua_xmpp_stanzas_out_total",
        "Presence stanzas sent, by type.",
        &[("type", "available")],
    ),
    (
        "counter",
        "pua_xmpp_translation_errors_total",
        "NOTIFY bodies refused, by kind.",
        &[("kind", "pidf_not_well_formed")],
    ),
    (
        "counter",
        "pua_xmpp_component_reconnects_total",
        "XEP-0114 link losses.",
        &[],
    ),
    (
        "gauge",
        "pua_xmpp_component_up",
        "1 while the XEP-0114 component link is up.",
        &[],
    ),
    (
        "gauge",
        "pua_xmpp_xmpp_outbox_stanzas",
        "Stanzas queued for the XMPP server (they wait here while the link is down).",
        &[],
    ),
    (
        "counter",
        "pua_xmpp_xmpp_stanzas_dropped_total",
        "Stanzas dropped because the outbound queue was full (xmpp.queue_limit).",
        &[],
    ),
    (
        "counter",
        "pua_xmpp_limit_refusals_total",
        "Subscriptions refused by limits.*, by direction.",
        &[("direction", "xmpp_to_sip")],
    ),
    (
        "counter",
        "pua_xmpp_store_refusals_total",
        "Subscriptions refused because the store was not writing, by direction.",
        &[("direction", "xmpp_to_sip")],
    ),
    (
        "counter",
        access::REFUSALS,
        "HTTP requests refused by http.allow (reason address, 403) or http.token (reason token, 401).",
        &[("reason", "token")],
    ),
    (
        "counter",
        "pua_xmpp_sip_read_pauses_total",
        "Times the SIP TCP readers paused under overload.",
        &[],
    ),
    (
        "counter",
        "pua_xmpp_sip_connections_total",
        "SIP stream connections opened, by transport (tcp, tls) and direction.",
        &[("transport", "tcp"), ("direction", "outbound")],
    ),
    (
        "counter",
        "pua_xmpp_sip_tls_handshake_failures_total",
        "SIP over TLS handshakes that failed (bad or untrusted certificate, timeout), by direction.",
        &[("direction", "outbound")],
    ),
    (
        "counter",
        "pua_xmpp_sip_tls_reload_failures_total",
        "SIGHUP reloads of sip.tls_cert/tls_key/tls_ca that failed (the old ones stay).",
        &[],
    ),
    (
        "counter",
        "pua_xmpp_actor_restarts_total",
        "Shard actors that died and were started again by the registry, by actor.",
        &[("actor", "subscriber_shard")],
    ),
    (
        "counter",
        "pua_xmpp_faults_contained_total",
        "Faults caught at a pair or presentity and ended there, by kind.",
        &[("kind", "subscriber")],
    ),
    (
        "gauge",
        "pua_xmpp_store_queue_depth",
        "Store ops sent and not yet committed.",
        &[],
    ),
    (
        "gauge",
        "pua_xmpp_store_writable",
        "1 while the store commits, 0 while its writes fail.",
        &[],
    ),
    (
        "counter",
        "pua_xmpp_store_failures_total",
        "Failed store commit attempts.",
        &[],
    ),
    (
        "histogram",
        "pua_xmpp_store_commit_seconds",
        "Time to commit one store batch.",
        &[],
    ),
    (
        "histogram",
        "pua_xmpp_notify_latency_seconds",
        "NOTIFY sent to final response.",
        &[],
    ),
    (
        "histogram",
        "pua_xmpp_publish_latency_seconds",
        "PUBLISH sent to final response.",
        &[],
    ),
    (
        "histogram",
        "pua_xmpp_subscribe_latency_seconds",
        "SUBSCRIBE sent to final response.",
        &[],
    ),
];

/// Describes every family and makes its first series at zero (idempotent).
fn register_families() {
    for &(kind, name, help, labels) in FAMILIES {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|&(k, v)| metrics::Label::new(k, v))
            .collect();
        match kind {
            "counter" => {
                metrics::describe_counter!(name, help);
                metrics::counter!(name, labels).increment(0);
            }
            "gauge" => {
                metrics::describe_gauge!(name, help);
                metrics::gauge!(name, labels).increment(0.0);
            }
            _ => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
                let _ = metrics::histogram!(name, labels);
            }
        }
    }
    metrics::gauge!("pua_xmpp_store_writable").set(1.0);
    metrics::counter!(access::REFUSALS, "reason" => "address").increment(0);
}

/// Installs the metrics recorder; call before any actor records anything.
///
/// Also starts the recorder's upkeep: a histogram keeps every sample until the next upkeep or
/// scrape, so a gateway nobody scrapes would otherwise grow by 8 bytes per recorded latency
/// (hundreds of MB an hour at tens of thousands of NOTIFYs a second).
pub fn install_metrics() {
    static UPKEEP: std::sync::Once = std::sync::Once::new();
    let _ = prometheus();
    register_families();
    UPKEEP.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(|| loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                prometheus().run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain only when /metrics is read");
        }
    });
}

async fn metrics_page(state: web::Data<State>) -> HttpResponse {
    let store = state.store.health();
    metrics::gauge!("pua_xmpp_store_queue_depth").set(store.queued as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(prometheus().render())
}

async fn subscriptions(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let Some(user) = query.get("user").filter(|u| !u.is_empty()).cloned() else {
        return HttpResponse::BadRequest().body("missing parameter: user (a JID or a SIP URI)\n");
    };
    match state
        .registry
        .send(crate::messages::ListSubscriptions { user })
        .await
    {
        Ok(Ok(list)) => HttpResponse::Ok().json(list),
        Ok(Err(e)) => HttpResponse::BadRequest().body(format!("{e}\n")),
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("{e}\n")),
    }
}

/// Accepts `uri`, `expires` and optional `watcher` as an urlencoded form body or query string.
async fn req_winfo(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> HttpResponse {
    let mut params: HashMap<String, String> = query.into_inner();
    match parse_form(&body) {
        Some(form) => params.extend(form),
        None => return HttpResponse::BadRequest().body("body: not an urlencoded form\n"),
    }
    let Some(uri) = params.get("uri").filter(|u| !u.is_empty()).cloned() else {
        return HttpResponse::BadRequest().body("missing parameter: uri\n");
    };
    let expires = match params.get("expires").map(|e| e.trim().parse::<u32>()) {
        None => 3600,
        Some(Ok(e)) => e,
        Some(Err(_)) => return HttpResponse::BadRequest().body("expires: not a number\n"),
    };
    let watcher = params.get("watcher").filter(|w| !w.is_empty()).cloned();
    let msg = ReqWinfo {
        uri,
        expires,
        watcher,
    };
    match state.registry.send(msg).await {
        Ok(Ok(())) => HttpResponse::Ok().body("ok\n"),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "req_winfo refused");
            HttpResponse::NotFound().body(format!("{e}\n"))
        }
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("{e}\n")),
    }
}

/// 200 while the gateway keeps its promises: the XMPP link is up, the store writes, and every
/// actor runs (the registry answers within 2 s and no shard's thread died). Otherwise 503 with
/// the first failing check as `reason`. `checks` has each one.
async fn health(state: web::Data<State>) -> HttpResponse {
    const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
    let link = match state.link.send(GetLinkStatus).await {
        Ok(up) => up,
        Err(_) => {
            return HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"status": "unavailable", "reason": "shutting down"}))
        }
    };
    let store = state.store.health();
    let dead = match tokio::time::timeout(
        ANSWER_WITHIN,
        state.registry.send(crate::messages::GetLiveness),
    )
    .await
    {
        Ok(Ok(dead)) => dead,
        Ok(Err(_)) => vec!["registry".to_owned()],
        Err(_) => vec!["registry (no answer within 2 s)".to_owned()],
    };
    let store_text = if !store.writer_alive {
        "writer stopped".to_owned()
    } else if store.failing {
        format!(
            "not writable: {}",
            store.last_error.as_deref().unwrap_or("error")
        )
    } else {
        "ok".to_owned()
    };
    let actors_text = if dead.is_empty() {
        "ok".to_owned()
    } else {
        format!("stopped: {}", dead.join(", "))
    };
    let checks = serde_json::json!({
        "xmpp": if link { "up" } else { "down" },
        "store": store_text,
        "store_queued": store.queued,
        "actors": actors_text,
    });
    let reason = if !link {
        Some("XMPP component not connected".to_owned())
    } else if store_text != "ok" {
        Some(format!("store {store_text}"))
    } else if !dead.is_empty() {
        Some(format!("actors {actors_text}"))
    } else {
        None
    };
    let mut body = match &reason {
        None => serde_json::json!({"status": "ok", "checks": checks}),
        Some(reason) => {
            serde_json::json!({"status": "unavailable", "reason": reason, "checks": checks})
        }
    };
    // active/standby (issue 17): which role, under which fence (0 once the lease is lost)
    if let (Some(fence), Some(obj)) = (&state.fence, body.as_object_mut()) {
        obj.insert("role".to_owned(), serde_json::json!("active"));
        obj.insert("fence".to_owned(), serde_json::json!(fence.get()));
    }
    match reason {
        None => HttpResponse::Ok().json(body),
        Some(_) => HttpResponse::ServiceUnavailable().json(body),
    }
}

/// The answer of a standby (issue 17) to `GET /health` while it reaches the database (so it
/// could take over): 200, so a container health check keeps it (it is meant to run), with a
/// body that tells it from an active instance.
pub const STANDBY_HEALTH: &str = r#"{"status":"standby","role":"standby"}"#;

/// A standby's only HTTP service: `GET /health` answers [`STANDBY_HEALTH`] while the lease
/// requests get answers, 503 with the reason while they do not (a standby that cannot take
/// over is not a healthy standby), anything else 503 (so Kamailio's req_winfo call moves on
/// to the other instance). Plain HTTP, or HTTPS with the configured `http.tls_cert` (a health
/// check works the same on both roles), on a thread of its own, before any actix system
/// exists; stopped (the port freed) before the instance, now active, binds the real API on
/// the same address.
pub struct StandbyHealth {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandbyHealth {
    /// Binds `listen` and serves until [`StandbyHealth::stop`], over TLS when `tls` is given,
    /// answering `/health` from `status`.
    pub fn serve(
        listen: SocketAddr,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        status: crate::store::lease_driver::LeaseStatus,
    ) -> std::io::Result<StandbyHealth> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let https = tls.is_some();
        let thread = std::thread::Builder::new()
            .name("standby-health".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((conn, _)) => standby_conn(conn, tls.as_ref(), &status),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "standby /health: accept failed");
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                }
            })?;
        tracing::info!(%listen, https, "standby: serving GET /health only");
        Ok(StandbyHealth {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving and frees the address (waits for the thread).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of a standby's health service, plain or TLS (the handshake bounded by the
/// same 1 s timeouts as the request).
fn standby_conn(
    conn: std::net::TcpStream,
    tls: Option<&std::sync::Arc<rustls::ServerConfig>>,
    status: &crate::store::lease_driver::LeaseStatus,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    match tls {
        None => standby_answer(conn, status),
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(server) => {
                let mut stream = rustls::StreamOwned::new(server, conn);
                standby_answer(&mut stream, status);
                stream.conn.send_close_notify();
                let _ = stream.conn.complete_io(&mut stream.sock);
            }
            Err(e) => tracing::debug!(error = %e, "standby /health: TLS setup failed"),
        },
    }
}

/// One request of a standby's health service: the request line decides, the rest is read
/// only as far as the first blank line (at most 8 KiB, 1 s).
fn standby_answer(
    mut conn: impl std::io::Read + std::io::Write,
    status: &crate::store::lease_driver::LeaseStatus,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, body) = standby_reply(&buf, status.unreachable());
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.flush();
}

/// The status line and body a standby answers to `request` (its head), given why it could
/// not take over now (`None`: it could).
pub fn standby_reply(request: &[u8], unreachable: Option<String>) -> (&'static str, String) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if method != b"GET" || path != b"/health" {
        return (
            "503 Service Unavailable",
            r#"{"status":"standby","reason":"standby instance: only GET /health is served"}"#
                .to_owned(),
        );
    }
    match unreachable {
        None => ("200 OK", STANDBY_HEALTH.to_owned()),
        Some(reason) => (
            "503 Service Unavailable",
            serde_json::json!({
                "status": "unavailable",
                "role": "standby",
                "reason": format!("{reason}: cannot take over"),
            })
            .to_string(),
        ),
    }
}

/// `a=b&c=d` with percent-decoding and `+` as space.
fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k)?, decode(v)?);
    }
    Some(out)
}

fn decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = (it.next()? as char).to_digit(16)?;
                let lo = (it.next()? as char).to_digit(16)?;
                bytes.push((hi * 16 + lo) as u8);
            }
            _ => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// The access policy of `[http]`: the allow-list and the token (read from `token_file` if
/// that is where it is). Errors name the key; they never contain the token.
pub fn access_from(http: &crate::config::HttpConfig) -> Result<access::Access, String> {
    let allow = http
        .allow
        .iter()
        .map(|a| access::Cidr::parse(a).map_err(|e| format!("http.allow: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let token = http.bearer_token()?.map(access::Secret);
    Ok(access::Access { allow, token })
}

/// Binds and starts the HTTP server on the current actix system, with `[http]`'s access
/// policy and, when `tls_cert` is set, TLS.
pub fn start(
    listen: SocketAddr,
    http: &crate::config::HttpConfig,
    registry: Addr<Registry>,
    link: Addr<LinkStatus>,
    store: crate::store::StoreHandle,
    fence: Option<crate::store::postgres::Fence>,
) -> std::io::Result<()> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let policy = access_from(http).map_err(invalid)?;
    let tls = if http.tls_cert.is_empty() {
        None
    } else {
        Some(tls::server_config(&http.tls_cert, &http.tls_key).map_err(invalid)?)
    };
    if policy.is_open() && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the HTTP admin API (/metrics, /subscriptions, /pua/req_winfo) is open to anyone \
             who reaches this address: set http.token and/or http.allow"
        );
    }
    tracing::info!(
        %listen,
        tls = tls.is_some(),
        token = policy.token.is_some(),
        allow = policy.allow.len(),
        "HTTP admin API access"
    );
    let data = web::Data::new(State {
        registry,
        link,
        store,
        fence,
    });
    let policy = web::Data::new(policy);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(policy.clone())
            .wrap(actix_web::middleware::from_fn(access::guard))
            .route("/pua/req_winfo", web::post().to(req_winfo))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics_page))
            .route("/subscriptions", web::get().to(subscriptions))
    })
    .workers(1)
    .disable_signals();
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(listen, config)?,
        None => server.bind(listen)?,
    };
    actix_rt::spawn(server.run());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let m = parse_form(
            b"uri=sip%3Aalice*xmpp.test%40sip-xmpp.test&expires=600&watcher=sip%3Acarol%40sip.test",
        )
        .unwrap();
        assert_eq!(m["uri"], "sip:alice*xmpp.test@sip-xmpp.test");
        assert_eq!(m["expires"], "600");
        assert_eq!(m["watcher"], "sip:carol@sip.test");
        assert_eq!(parse_form(b"a=%zz"), None);
        assert_eq!(parse_form(b"a=b+c").unwrap()["a"], "b c");
    }
}
