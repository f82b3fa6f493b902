# syntax=docker/dockerfile:1
# The pua-xmpp gateway: built in the Rust image, run in a slim Debian bookworm as a non-root
# user. Configuration: /etc/pua-xmpp/pua-xmpp.toml (mount your own over the shipped
# docker/pua-xmpp.toml), plus PUA_XMPP__SECTION__KEY variables, e.g. the secret:
#   docker build -t pua-xmpp .
#   docker run -e PUA_XMPP__XMPP__SECRET=... -v $PWD/my.toml:/etc/pua-xmpp/pua-xmpp.toml:ro \
#       -v pua-xmpp-store:/var/lib/pua-xmpp pua-xmpp
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# cache mounts (BuildKit): the registry and target/ survive between builds
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p pua-xmpp-actors \
    && install -m 0755 target/dist/pua-xmpp /usr/local/bin/pua-xmpp

FROM debian:bookworm-slim
# the binary needs only libc and libgcc_s (SQLite is bundled); bash, sed, timeout and
# hostname (entrypoint and health check) are part of the base image
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pua-xmpp --no-create-home \
        --shell /usr/sbin/nologin pua-xmpp \
    && mkdir -p /var/lib/pua-xmpp /etc/pua-xmpp \
    && chown pua-xmpp:pua-xmpp /var/lib/pua-xmpp
COPY --from=build /usr/local/bin/pua-xmpp /usr/local/bin/pua-xmpp
COPY docker/pua-xmpp-entrypoint docker/pua-xmpp-health /usr/local/bin/
COPY docker/pua-xmpp.toml /etc/pua-xmpp/pua-xmpp.toml
USER pua-xmpp
WORKDIR /var/lib/pua-xmpp
# the store (store.path = /var/lib/pua-xmpp/pua-xmpp.db): subscriptions survive a restart
VOLUME /var/lib/pua-xmpp
# SIP (sip.listen) and the HTTP API (http.listen: /health, /pua/req_winfo)
EXPOSE 5080/udp 5080/tcp 9080
# 200 only while the XMPP component link is up; bash /dev/tcp, no curl needed
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 CMD ["pua-xmpp-health"]
# SIGTERM: the gateway flushes its store and exits
STOPSIGNAL SIGTERM
ENTRYPOINT ["pua-xmpp-entrypoint"]
CMD ["--config", "/etc/pua-xmpp/pua-xmpp.toml"]
