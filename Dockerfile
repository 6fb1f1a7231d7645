# Container image of Dockhand: the worker, `dockhand serve` and the CLI, used by
# docker-compose.yml.
#
# Needs an image registry to pull rust:1-bookworm and debian:bookworm-slim; none
# is reachable on the dev machines or in CI, where scripts/demo runs the worker
# straight from `cargo build` instead, and `scripts/image` (Dockerfile.local)
# builds the same dockhand:latest FROM scratch out of a local binary.

# --- build stage -------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole tree (minus .dockerignore) rather than just Cargo.* and src/, so that
# new targets, build scripts or embedded files keep building without editing this.
COPY . .
RUN cargo build --release --locked --bin dockhand \
 && cp target/release/dockhand /usr/local/bin/dockhand

# --- runtime stage -----------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: HTTPS webhooks and git sources. curl: the health checks of
# `dockhand serve` (docker-compose.yml). No git: libgit2 is built into the binary.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/dockhand /usr/local/bin/dockhand
# Runs as root: the worker talks to the host's Docker engine through the mounted
# /var/run/docker.sock, which is root-owned on most hosts.
ENTRYPOINT ["dockhand"]
CMD ["worker"]
