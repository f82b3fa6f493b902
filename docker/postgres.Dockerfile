# PostgreSQL 15 (Debian bookworm) for the `ha` profile of docker-compose.yml: the shared store
# of an active/standby pair of gateways (issue 17). Built from the Debian base image like the
# other images here (no registry image needed).
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/pua-postgres /run/pua-postgres \
    && chown postgres:postgres /var/lib/pua-postgres /run/pua-postgres
COPY docker/postgres-entrypoint /usr/local/bin/postgres-entrypoint
USER postgres
VOLUME /var/lib/pua-postgres
EXPOSE 5432/tcp
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=5 \
    CMD /usr/lib/postgresql/15/bin/pg_isready -h 127.0.0.1 -p 5432 -q
ENTRYPOINT ["postgres-entrypoint"]
