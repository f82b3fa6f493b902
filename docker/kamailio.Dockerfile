# Kamailio 5.6 (Debian bookworm) running the shipped config/kamailio.cfg unchanged: the
# entrypoint passes the addresses as `-A NAME=value` defines, as tests/lab/start.sh does.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        kamailio kamailio-presence-modules kamailio-sqlite-modules kamailio-utils-modules \
        sqlite3 hostname \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/pua-kamailio /run/pua-kamailio \
    && chown kamailio:kamailio /var/lib/pua-kamailio /run/pua-kamailio
COPY config/kamailio.cfg /etc/pua-xmpp/kamailio.cfg
COPY docker/kamailio-entrypoint /usr/local/bin/kamailio-entrypoint
USER kamailio
# the presence DB (sqlite: publications); created from Debian's schema files when missing
VOLUME /var/lib/pua-kamailio
EXPOSE 5060/udp 5060/tcp
# healthy once the ctl socket answers and the DNS-cache entries are in (ready file)
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD test -f /run/pua-kamailio/ready && kamcmd -s unix:/run/pua-kamailio/kamailio_ctl core.uptime > /dev/null
ENTRYPOINT ["kamailio-entrypoint"]
