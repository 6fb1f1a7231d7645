#!/usr/bin/env bash
# shellcheck shell=bash
#
# Shared helpers for scripts/test, scripts/demo and .ci/run.  Source it:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#     trap dh_cleanup EXIT
#
# It sets no shell options of its own (the callers run with `set -euo pipefail`;
# sourcing it from an interactive shell must not make that shell exit on the first
# failing command), and every function is written to behave the same either way.
#
# Assumptions about the machine (true on the dev machines and in CI): Debian
# bookworm, root (or sudo), a running Docker engine, no image registry, and only
# crates.io / PyPI / Debian's apt mirrors reachable.  Nothing here contacts any
# other address: Redis listens on 127.0.0.1 and the test image is built FROM
# scratch out of Debian's static busybox.

# Refuse to be run directly: it only defines functions, so running it would
# silently do nothing.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/lib.sh is meant to be sourced, not run" >&2
    exit 2
fi

# Resolved once, at source time, from this file's own location, so the helpers
# work whatever the caller's current directory is.
DH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# Keep cargo's output outside the clone: CI works in a fresh clone each run, and
# a shared target dir makes those rebuilds incremental instead of from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dockhand-target}"

# The local image the tests and the demo run jobs in.  Nothing can be pulled, so
# it is built here (see dh_build_images).
DH_TEST_IMAGE="${DH_TEST_IMAGE:-dockhand-busybox:latest}"

# State shared with dh_cleanup; the callers may set DH_WORKER_PID themselves.
DH_REDIS_PID="${DH_REDIS_PID:-}"
DH_REDIS_DIR="${DH_REDIS_DIR:-}"
DH_WORKER_PID="${DH_WORKER_PID:-}"

dh_root() {
    printf '%s\n' "$DH_ROOT"
}

# A short progress line, so the output of a long run can be skimmed.
dh_step() {
    printf '==> %s\n' "$*"
}

dh_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------

# True when /bin/busybox exists and is statically linked.  Debian's plain
# `busybox` package also installs /bin/busybox, but linked against glibc, which
# would not run in a FROM-scratch image; ldd fails on a static binary.
dh_have_static_busybox() {
    [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1
}

# Install, from Debian's packages, only what is missing; `apt-get update` is
# slow and touches the network, so it runs once and only when needed.
dh_install_missing() {
    local -a pkgs=()
    # redis-server also runs the Sentinel tests' sentinels (`redis-server
    # <conf> --sentinel`: the same binary, so no redis-sentinel package).
    command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
    dh_have_static_busybox || pkgs+=(busybox-static)
    # git2 builds libgit2 itself but links the system OpenSSL (for https remotes).
    dpkg -s libssl-dev >/dev/null 2>&1 || pkgs+=(libssl-dev)
    command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
    command -v git >/dev/null 2>&1 || pkgs+=(git)
    # `docker-compose config` checks docker-compose.yml in the suite.
    command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
    # Used by dh_free_port; present on the dev machines, but cheap to make sure of.
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    # The demo shows the HTTP API with curl.
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    # The dashboard's test drives a real headless browser (tests/it/dashboard.rs).
    command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
    # The SSH executor's tests start a real OpenSSH server on loopback
    # (tests/it/ssh_executor.rs); its python3 is the "remote" interpreter.
    [[ -x /usr/sbin/sshd ]] || pkgs+=(openssh-server)
    command -v ssh-keygen >/dev/null 2>&1 || pkgs+=(openssh-client)

    if ((${#pkgs[@]} > 0)); then
        local -a sudo=()
        if [[ "$(id -u)" -ne 0 ]]; then
            command -v sudo >/dev/null 2>&1 ||
                dh_die "need root (or sudo) to install: ${pkgs[*]}"
            sudo=(sudo)
        fi
        dh_step "installing ${pkgs[*]} (apt)"
        # -qq and noninteractive: no prompts (CI has no stdin) and little noise.
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            dh_die "apt-get update failed"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
            dh_die "apt-get install ${pkgs[*]} failed"
        # busybox-static replaces a dynamic busybox; check it really did.
        dh_have_static_busybox || dh_die "/bin/busybox is still not a static binary"
    fi

    # Docker is not installed here on purpose: the engine is part of the machine
    # and must already be running; say so clearly rather than fail later in a test.
    command -v docker >/dev/null 2>&1 ||
        dh_die "the docker CLI is not installed; Dockhand needs a running Docker engine"
    docker info >/dev/null 2>&1 ||
        dh_die "cannot reach the Docker engine ('docker info' failed): start dockerd or check DOCKER_HOST / permissions on /var/run/docker.sock"

    # The Python producer example (and its test, and the benchmark) use redis-py.
    # It comes from PyPI for whichever python3 is first on PATH (here a pyenv
    # build, which Debian's python3-redis would not reach).
    if ! python3 -c 'import redis' >/dev/null 2>&1; then
        dh_step "installing redis-py (pip)"
        python3 -m pip install -q --disable-pip-version-check redis >/dev/null 2>&1 ||
            dh_die "pip install redis failed"
    fi

    # The webhook tests check our signatures with the Standard Webhooks reference
    # verifier, an implementation independent of ours; it too comes from PyPI.
    if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
        dh_step "installing standardwebhooks (pip)"
        python3 -m pip install -q --disable-pip-version-check standardwebhooks >/dev/null 2>&1 ||
            dh_die "pip install standardwebhooks failed"
    fi

    # The metrics tests parse `/metrics` with the Prometheus client's own text
    # parser (an implementation independent of ours), pinned so a new release's
    # stricter or looser parsing does not change what the tests accept.
    local prometheus_client=0.26.0
    if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus_client') != '$prometheus_client')" >/dev/null 2>&1; then
        dh_step "installing prometheus_client $prometheus_client (pip)"
        python3 -m pip install -q --disable-pip-version-check "prometheus_client==$prometheus_client" >/dev/null 2>&1 ||
            dh_die "pip install prometheus_client failed"
    fi
    # The dashboard's test speaks the DevTools Protocol to Chromium over a
    # WebSocket (tests/it/cdp.py); pinned, as the protocol client is all it uses.
    if ! python3 -c 'import websocket, sys; sys.exit(websocket.__version__ != "1.8.0")' >/dev/null 2>&1; then
        dh_step "installing websocket-client (pip)"
        python3 -m pip install -q --disable-pip-version-check websocket-client==1.8.0 >/dev/null 2>&1 ||
            dh_die "pip install websocket-client failed"
    fi
    # The API test runs schemathesis (property-based requests generated from the
    # served /openapi.json) against a real `dockhand serve`.  Pinned: its checks
    # change between releases, and the suite must not start failing on its own.
    if ! python3 -c 'import schemathesis, sys; sys.exit(schemathesis.__version__ != "4.32.5")' >/dev/null 2>&1; then
        dh_step "installing schemathesis 4.32.5 (pip)"
        python3 -m pip install -q --disable-pip-version-check "schemathesis==4.32.5" >/dev/null 2>&1 ||
            dh_die "pip install schemathesis failed"
    fi

    # The upload test (tests/it/streams.rs) runs moto's S3 server and presigns its
    # URL with boto3 (a dependency of moto). Pinned: the server's behaviour is
    # what the test checks against.
    if ! python3 -c "import importlib.metadata as m, sys, flask; sys.exit(m.version('moto') != '5.2.1')" >/dev/null 2>&1; then
        dh_step "installing moto[server] 5.2.1 (pip)"
        python3 -m pip install -q --disable-pip-version-check "moto[server]==5.2.1" >/dev/null 2>&1 ||
            dh_die "pip install moto[server] failed"
    fi

    # rustup puts cargo in ~/.cargo/bin, which a non-login shell may not have on PATH.
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 ||
        dh_die "cargo not found: install the Rust toolchain (rustup) and put ~/.cargo/bin on PATH"
    return 0
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

# Print a TCP port that is free on 127.0.0.1 right now (the kernel picks it).
# Another process could take it before we bind it; dh_start_redis retries.
dh_free_port() {
    python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Give the cluster-enabled server at host:port every slot, and wait (~10 s) for
# it to say the cluster is ok.
dh_cluster_of_one() {
    local host=$1 port=$2 i
    redis-cli -h "$host" -p "$port" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null || return 1
    for ((i = 0; i < 100; i++)); do
        redis-cli -h "$host" -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' && return 0
        sleep 0.1
    done
    return 1
}

# Start a throw-away redis-server for this run: loopback only, a free port, a
# fresh directory, no persistence (tests must not see a previous run's keys).
# Exports REDIS_URL; sets DH_REDIS_PID and DH_REDIS_DIR for dh_stop_redis.
#
# `dh_start_redis cluster` makes it a Redis Cluster of one node that serves
# every slot. Clients use it as a plain Redis (no redirection ever happens),
# but it refuses, with CROSSSLOT, a script, a transaction or a command whose
# keys are in different slots: the suite runs on it so that any step that
# would break on a real cluster fails a test.
dh_start_redis() {
    local port attempt i
    local -a cluster=()
    DH_REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/dockhand-redis.XXXXXX")"
    if [[ "${1:-}" == cluster ]]; then
        cluster=(--cluster-enabled yes --cluster-config-file "$DH_REDIS_DIR/nodes.conf")
    fi
    for attempt in 1 2 3; do
        port="$(dh_free_port)"
        # --daemonize no + & keeps it our child, so we know its pid and can wait for it.
        redis-server --bind 127.0.0.1 --port "$port" --dir "$DH_REDIS_DIR" \
            --save "" --appendonly no --daemonize no "${cluster[@]}" \
            >"$DH_REDIS_DIR/redis.log" 2>&1 &
        DH_REDIS_PID=$!
        # Bounded wait (~10 s) for it to answer.
        for ((i = 0; i < 100; i++)); do
            if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; then
                export REDIS_URL="redis://127.0.0.1:${port}/"
                if ((${#cluster[@]})); then
                    dh_cluster_of_one 127.0.0.1 "$port" ||
                        dh_die "redis-server at $REDIS_URL did not become a cluster of one"
                fi
                dh_step "redis-server (pid $DH_REDIS_PID) at $REDIS_URL${cluster:+ (a cluster of one node)}"
                return 0
            fi
            # Died (most likely the port was taken in the meantime): try another port.
            kill -0 "$DH_REDIS_PID" 2>/dev/null || break
            sleep 0.1
        done
        printf 'redis-server did not come up on port %s (attempt %s); its log:\n' \
            "$port" "$attempt" >&2
        sed 's/^/    /' "$DH_REDIS_DIR/redis.log" >&2 || true
        dh_kill_wait "$DH_REDIS_PID" 5
        DH_REDIS_PID=
    done
    rm -rf "$DH_REDIS_DIR"
    DH_REDIS_DIR=
    dh_die "could not start redis-server"
}

dh_stop_redis() {
    if [[ -n "${DH_REDIS_PID:-}" ]]; then
        dh_kill_wait "$DH_REDIS_PID" 10
        DH_REDIS_PID=
    fi
    if [[ -n "${DH_REDIS_DIR:-}" ]]; then
        rm -rf "$DH_REDIS_DIR"
        DH_REDIS_DIR=
    fi
    return 0
}

# ---------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------

# dh_kill_wait PID [SECONDS]: SIGTERM, wait up to SECONDS (default 10) for it to
# exit, then SIGKILL.  Polls instead of a bare `wait`, which could block forever.
# Never fails, so it is safe in an EXIT trap under `set -e`.
dh_kill_wait() {
    local pid="$1" secs="${2:-10}" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        printf 'pid %s still running after %ss; sending SIGKILL\n' "$pid" "$secs" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Reap it if it is our child (quietly: it may not be, or already be reaped).
    wait "$pid" 2>/dev/null || true
    return 0
}

# For `trap dh_cleanup EXIT`: stop the background worker (if DH_WORKER_PID is
# set) and then Redis.  It must not fail (a failing command under `set -e` inside
# the trap would replace the script's exit status); bash keeps the original
# exit status after the trap since this never calls `exit`.
dh_cleanup() {
    if [[ -n "${DH_SERVE_PID:-}" ]]; then
        dh_kill_wait "$DH_SERVE_PID" 10
        DH_SERVE_PID=
    fi
    if [[ -n "${DH_WORKER_PID:-}" ]]; then
        dh_kill_wait "$DH_WORKER_PID" 30
        DH_WORKER_PID=
    fi
    dh_stop_redis
    return 0
}

# Install dh_cleanup for EXIT, and turn Ctrl-C / SIGTERM into a normal exit so
# that the EXIT trap runs and the status says what happened (130 / 143).
dh_trap_cleanup() {
    trap dh_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------
# Images and build
# ---------------------------------------------------------------------------

# Build $DH_TEST_IMAGE from tests/images/busybox/Dockerfile unless it is already
# there and works (DH_REBUILD_IMAGES=1 forces a rebuild).  No registry is
# reachable, so the image is FROM scratch plus Debian's static busybox, built with
# the classic builder (BuildKit would want to fetch its frontend and metadata).
dh_build_images() {
    local dockerfile="$DH_ROOT/tests/images/busybox/Dockerfile" ctx out
    [[ -f "$dockerfile" ]] || dh_die "missing $dockerfile"

    if [[ "${DH_REBUILD_IMAGES:-0}" != 1 ]] &&
        docker image inspect "$DH_TEST_IMAGE" >/dev/null 2>&1; then
        if dh_check_test_image; then
            dh_step "image $DH_TEST_IMAGE present"
            return 0
        fi
        dh_step "image $DH_TEST_IMAGE is present but broken; rebuilding"
    fi

    dh_have_static_busybox || dh_die "/bin/busybox is missing or not static (run dh_install_missing)"
    dh_step "building image $DH_TEST_IMAGE"
    # A minimal context of our own: the Dockerfile and the busybox binary only.
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/dockhand-image.XXXXXX")"
    cp "$dockerfile" "$ctx/Dockerfile"
    cp /bin/busybox "$ctx/busybox"
    chmod 0755 "$ctx/busybox"
    if ! out="$(DOCKER_BUILDKIT=0 docker build --pull=false -t "$DH_TEST_IMAGE" "$ctx" 2>&1)"; then
        printf '%s\n' "$out" >&2
        rm -rf "$ctx"
        dh_die "docker build of $DH_TEST_IMAGE failed"
    fi
    rm -rf "$ctx"
    dh_check_test_image || dh_die "image $DH_TEST_IMAGE was built but does not run 'echo ok'"
    dh_step "image $DH_TEST_IMAGE built"
}

# The image is usable when a networkless container of it can run a command.
dh_check_test_image() {
    local out
    out="$(docker run --rm --network none "$DH_TEST_IMAGE" echo ok 2>&1)" || {
        printf '%s\n' "$out" >&2
        return 1
    }
    [[ "$out" == ok ]]
}

# dh_cargo_build [CARGO BUILD ARGS...]: dev-profile build in the repo root; by
# default the binaries and every test target, so that the test runner afterwards
# only links nothing new.  Exports DOCKHAND_BIN, the CLI the scripts drive.
# `cargo build "$@" --message-format=json` in the project, printing "<name>
# <executable>" for the bench targets engine_floor and attach_reader (their
# executables have hashed names; cargo's JSON messages say which).
dh_bench_bins() {
    (cd "$DH_ROOT" && cargo build "$@" --message-format=json) |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    name = m.get("target", {}).get("name")
    if m.get("reason") == "compiler-artifact" and name in ("engine_floor", "attach_reader") and m.get("executable"):
        print(name, m["executable"])'
}

dh_cargo_build() {
    local -a what=("$@")
    ((${#what[@]} > 0)) || what=(--bins --tests)
    dh_step "cargo build ${what[*]} (target dir $CARGO_TARGET_DIR)"
    (cd "$DH_ROOT" && cargo build "${what[@]}") || dh_die "cargo build failed"
    export DOCKHAND_BIN="$CARGO_TARGET_DIR/debug/dockhand"
}
