#!/usr/bin/env bash
# Run a single PostgreSQL server for development and tests, from the Debian packages (installed with
# apt-get on first use when no server binaries are found).
#
#   deploy/postgres-local.sh start DIR   start (or find) the server kept in DIR; the LAST stdout line is
#                                        its DSN, postgresql://postgres@127.0.0.1:PORT/winnow (progress
#                                        goes to stderr)
#   deploy/postgres-local.sh stop DIR    stop it (pg_ctl stop -m fast, -m immediate after a deadline);
#                                        DIR stays
#
# DIR holds data/ (the cluster; its postgresql.conf keeps the port), postgres.log and the Unix socket.
# Starting a stopped DIR again reuses its port and data. Run as root, the server runs as the
# unprivileged user postgres (DIR is handed to it, so DIR's parents must be searchable by it); run as
# anyone else, it runs as that user. The superuser is always called postgres.
#
# A throwaway server for one machine: it listens on 127.0.0.1 only, every local and loopback
# connection is trusted without a password, and fsync is off (fast, but an OS crash can lose data).
# Never point it at data you want to keep.
# Environment: POSTGRES_BIN_DIR (default: the newest /usr/lib/postgresql/*/bin),
# POSTGRES_START_TIMEOUT_S (default 60), POSTGRES_STOP_TIMEOUT_S (default 30), POSTGRES_SSL_DIR (first
# start only: a folder with server.crt and server.key; the server then offers TLS, and clients ask for
# it in their DSN, e.g. ?sslmode=verify-full&sslrootcert=CA.pem).
set -euo pipefail

SERVER_USER=postgres
DATABASE=winnow

log() { echo "postgres-local: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start|stop DIR"; }

as_server_user() { # the server refuses to run as root
  if ((EUID == 0)); then runuser -u "$SERVER_USER" -- "$@"; else "$@"; fi
}

find_bin_dir() { # -> the directory with initdb, pg_ctl, pg_isready and psql, or nothing
  local dir
  if [[ -n "${POSTGRES_BIN_DIR:-}" ]]; then
    echo "$POSTGRES_BIN_DIR"
    return
  fi
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/pg_isready" && -x "$dir/psql" ]] && { echo "$dir"; return; }
  done
  return 0
}

bin_dir() { # -> the server binaries, installing the Debian packages when there are none
  local dir
  dir="$(find_bin_dir)"
  if [[ -z "$dir" ]]; then
    ((EUID == 0)) \
      || die "no server binaries under /usr/lib/postgresql: apt-get install postgresql, or set POSTGRES_BIN_DIR"
    log "installing PostgreSQL from the Debian packages (first run)"
    # The package would create and start a system cluster on port 5432; we only want the binaries.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/winnow-no-main-cluster.conf
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    dir="$(find_bin_dir)"
    [[ -n "$dir" ]] || die "apt-get installed postgresql but no server binaries under /usr/lib/postgresql"
  fi
  [[ -x "$dir/pg_ctl" ]] || die "no pg_ctl in $dir"
  echo "$dir"
}

server_port() { sed -n 's/^port = \([0-9]*\).*/\1/p' "$1/data/postgresql.conf" | tail -n 1; }

running() { # BIN DIR -> 0 when a server runs on DIR/data
  [[ -f "$2/data/postmaster.pid" ]] && as_server_user "$1/pg_ctl" status -D "$2/data" >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

init_cluster() { # BIN DIR -> DIR/data, configured for 127.0.0.1 and a free port (first start only)
  local bin="$1" dir="$2" port
  port="$(free_port)"
  ((${#dir} + 20 < 108)) || die "$dir is too long for a Unix socket path; use a shorter DIR"
  log "initialising $dir/data"
  # -A trust: see the header; the server listens on 127.0.0.1 only.
  as_server_user "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  cat >>"$dir/data/postgresql.conf" <<EOF

# postgres-local.sh: a throwaway development and test server
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  if [[ -n "${POSTGRES_SSL_DIR:-}" ]]; then # TLS: clients may ask for it (sslmode=verify-full)
    [[ -f "$POSTGRES_SSL_DIR/server.crt" && -f "$POSTGRES_SSL_DIR/server.key" ]] \
      || die "POSTGRES_SSL_DIR needs server.crt and server.key"
    install -m 600 "$POSTGRES_SSL_DIR/server.crt" "$POSTGRES_SSL_DIR/server.key" "$dir/data/"
    if ((EUID == 0)); then chown "$SERVER_USER" "$dir/data/server.crt" "$dir/data/server.key"; fi
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >>"$dir/data/postgresql.conf"
  fi
}

start() {
  local dir="$1" bin port timeout_s="${POSTGRES_START_TIMEOUT_S:-60}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  bin="$(bin_dir)"
  if ((EUID == 0)); then
    id "$SERVER_USER" >/dev/null 2>&1 || die "no user $SERVER_USER to run the server as"
    chown "$SERVER_USER:" "$dir"
    runuser -u "$SERVER_USER" -- test -w "$dir" \
      || die "user $SERVER_USER cannot reach $dir (make its parent directories searchable)"
  fi
  if running "$bin" "$dir"; then
    port="$(server_port "$dir")"
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5 || die "server in $dir does not answer on $port"
    log "already running in $dir"
    echo "postgresql://postgres@127.0.0.1:$port/$DATABASE"
    return
  fi
  [[ -f "$dir/data/PG_VERSION" ]] || init_cluster "$bin" "$dir"
  port="$(server_port "$dir")"
  port_open "$port" && die "port $port (from $dir/data/postgresql.conf) is taken by another process"
  log "starting $("$bin/postgres" --version) on 127.0.0.1:$port (log: $dir/postgres.log)"
  # pg_ctl -w polls until the server accepts connections, giving up after -t seconds.
  if ! as_server_user "$bin/pg_ctl" start -D "$dir/data" -l "$dir/postgres.log" -w -t "$timeout_s" >/dev/null; then
    tail -n 40 "$dir/postgres.log" >&2
    stop "$dir"
    die "server did not accept connections within $timeout_s s"
  fi
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5 || die "server started but does not answer on 127.0.0.1:$port"
  if [[ -z "$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]]; then
    "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE $DATABASE" >&2
  fi
  log "started"
  echo "postgresql://postgres@127.0.0.1:$port/$DATABASE"
}

stop() {
  local dir="$1" bin timeout_s="${POSTGRES_STOP_TIMEOUT_S:-30}"
  bin="$(bin_dir)"
  if ! running "$bin" "$dir"; then
    log "no server running in $dir"
    return
  fi
  if ! as_server_user "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t "$timeout_s" >&2; then
    log "fast shutdown took over $timeout_s s; shutting down immediately"
    as_server_user "$bin/pg_ctl" stop -D "$dir/data" -m immediate -w -t "$timeout_s" >&2
  fi
  log "stopped"
}

[[ $# -eq 2 ]] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
