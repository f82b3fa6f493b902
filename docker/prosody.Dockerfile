# Prosody 0.12 (Debian bookworm) with the shipped config/prosody.cfg.lua, rendered at start by
# the entrypoint with the same @VAR@ substitution as tests/lab/start.sh.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prosody lua-unbound iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/pua-prosody/prosody-data /var/lib/pua-prosody/certs \
    && chown -R prosody:prosody /var/lib/pua-prosody
COPY config/prosody.cfg.lua /etc/pua-xmpp/prosody.cfg.lua.in
COPY docker/prosody-entrypoint /usr/local/bin/prosody-entrypoint
USER prosody
# accounts and rosters
VOLUME /var/lib/pua-prosody/prosody-data
# c2s (clients) and XEP-0114 components (the gateway)
EXPOSE 5222 5347
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ss -Hlnt | awk '{print $4}' | grep -q ':5222$' && ss -Hlnt | awk '{print $4}' | grep -q ':5347$'
ENTRYPOINT ["prosody-entrypoint"]
