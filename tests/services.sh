#!/usr/bin/env bash
# Start the services `make test` talks to when they are not running, with this machine
# kind's own commands (see README). Already-running services are left alone.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 120); do
    port_open "$1" && return 0
    sleep 1
  done
  echo "$2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 6379; then
  echo "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
fi

if ! port_open 5672; then
  echo "starting RabbitMQ on 127.0.0.1:5672"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi

# PostgreSQL and MariaDB are expected running; started here when installed, else named.
if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    wait_port 5432 PostgreSQL
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and is not installed (Debian: postgresql)" >&2
    exit 1
  fi
fi

if ! port_open 3306; then
  if [ -x /usr/sbin/mariadbd ]; then
    echo "starting MariaDB on 127.0.0.1:3306"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB
  else
    echo "MariaDB is not running on 127.0.0.1:3306 and is not installed (Debian: mariadb-server)" >&2
    exit 1
  fi
fi

# ZooKeeper, from Debian's package: the tests start a private server from it (and moto's
# SQS server from the virtualenv), so only the package is needed here.
if [ ! -f /usr/share/java/zookeeper.jar ]; then
  echo "installing ZooKeeper (Debian package zookeeper)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zookeeper >/dev/null
fi

# clang for wasm32-wasi with wasi-libc, from Debian's packages: C plugins build with them.
if ! command -v clang >/dev/null || [ ! -f /usr/lib/wasm32-wasi/libc.a ] \
    || ! ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
  echo "installing clang, lld and wasi-libc (Debian packages) for C plugins"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null
fi

# Chromium, from Debian's package: the Flower test loads Flower's pages in it, headless.
if ! command -v chromium >/dev/null; then
  echo "installing Chromium (Debian package chromium)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# Redis 6.0, the version Debian 11 and Ubuntu 22.04 ship, for the test that the worker
# takes tasks from a server older than 6.2 (no `RPOP key count`): Debian 11's own build,
# unpacked with the libraries it links under $CARGO_TARGET_DIR/redis-6.0 (not installed
# system-wide, where it would clash with the Redis above). The tests start it on a port
# of their own.
OLD_REDIS="${CARGO_TARGET_DIR:-$PWD/target}/redis-6.0"
if [ ! -x "$OLD_REDIS/redis-server" ]; then
  echo "fetching Redis 6.0 (Debian 11's packages) into $OLD_REDIS"
  rm -rf "$OLD_REDIS.tmp" && mkdir -p "$OLD_REDIS.tmp/debs"
  # Package files are looked up in the archive's index, so a security update's new name
  # is found; the security archive first, where the newest redis and libssl1.1 are.
  for archive in debian-security/dists/bullseye-security debian/dists/bullseye; do
    curl -fsS "http://deb.debian.org/$archive/main/binary-amd64/Packages.xz" | xz -d \
      | awk -v base="http://deb.debian.org/${archive%%/*}/" '
          /^Package: /  { want = ($2 ~ /^(redis-tools|libssl1\.1|liblua5\.1-0|lua-cjson|lua-bitop)$/) }
          want && /^Filename: / { print $2 " " base $2 }'
  done | while read -r file url; do
    name=$(basename "$file" | cut -d_ -f1)
    [ -e "$OLD_REDIS.tmp/debs/$name.deb" ] || curl -fsS -o "$OLD_REDIS.tmp/debs/$name.deb" "$url"
  done
  for deb in "$OLD_REDIS.tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$OLD_REDIS.tmp/root"; done
  rm -rf "$OLD_REDIS.tmp/debs"
  # Redis runs as the RDB checker when called by that name, so it gets the server's.
  cp "$OLD_REDIS.tmp/root/usr/bin/redis-check-rdb" "$OLD_REDIS.tmp/root/usr/bin/redis-server"
  cat > "$OLD_REDIS.tmp/redis-server" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/root/usr/lib/x86_64-linux-gnu" exec "$here/root/usr/bin/redis-server" "$@"
WRAPPER
  chmod +x "$OLD_REDIS.tmp/redis-server"
  "$OLD_REDIS.tmp/redis-server" --version | grep -q "v=6\.0\." || { echo "the Redis 6.0 unpacked is not 6.0" >&2; exit 1; }
  rm -rf "$OLD_REDIS" && mv "$OLD_REDIS.tmp" "$OLD_REDIS"
fi
