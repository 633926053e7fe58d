#!/usr/bin/env bash
# nginx reference for benchmarks: an nginx answering every request with the same 409
# {"error":"sold_out"} the sold-out path of snatch gives, so snatch's figures have a yardstick
# ("how close to a static answer from the fastest server we know").
#
# Source it and call:
#   nginx_ref_start [WORKERS]   starts nginx on a free loopback port in a temp dir; sets
#                               NGINX_REF_PID (master), NGINX_REF_PORT, NGINX_REF_URL, NGINX_REF_DIR
#   nginx_ref_stop              stops that nginx (by its PID) and removes the temp dir
# Or run it: nginx_ref.sh serve [WORKERS]  (foreground until Ctrl-C), nginx_ref.sh -h.
# Installs Debian's nginx-light with apt-get when no nginx is found.

nginx_ref__free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

nginx_ref__ensure() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        return 0
    fi
    echo "nginx_ref: installing nginx-light" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >&2
}

nginx_ref__bin() {
    command -v nginx 2>/dev/null || echo /usr/sbin/nginx
}

nginx_ref_start() {
    local workers="${1:-1}"
    nginx_ref__ensure || return 1
    NGINX_REF_DIR="$(mktemp -d /tmp/snatch-nginx-ref.XXXXXX)"
    NGINX_REF_PORT="$(nginx_ref__free_port)"
    NGINX_REF_URL="http://127.0.0.1:${NGINX_REF_PORT}/v1/events/ref/snatch"
    local d="$NGINX_REF_DIR"
    mkdir -p "$d/tmp"
    local user_line=""
    if [ "$(id -u)" = 0 ]; then
        user_line="user root;"  # workers otherwise switch to nobody, who cannot use the temp dir
    fi
    cat >"$d/nginx.conf" <<CONF
$user_line
worker_processes $workers;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 200000;
events {
    worker_connections 65536;
    multi_accept on;
}
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:${NGINX_REF_PORT} reuseport backlog=65535;
        location / {
            default_type application/json;
            return 409 '{"error":"sold_out"}';
        }
    }
}
CONF
    "$(nginx_ref__bin)" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" &
    NGINX_REF_PID=$!
    local i
    for i in $(seq 1 50); do
        if curl -s -o /dev/null "http://127.0.0.1:${NGINX_REF_PORT}/" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$NGINX_REF_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "nginx_ref: nginx did not come up; log:" >&2
    cat "$d/error.log" >&2 || true
    nginx_ref_stop
    return 1
}

nginx_ref_stop() {
    if [ -n "${NGINX_REF_PID:-}" ] && kill -0 "$NGINX_REF_PID" 2>/dev/null; then
        kill -TERM "$NGINX_REF_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            kill -0 "$NGINX_REF_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$NGINX_REF_PID" 2>/dev/null || true
        wait "$NGINX_REF_PID" 2>/dev/null || true
    fi
    if [ -n "${NGINX_REF_DIR:-}" ] && [ -d "$NGINX_REF_DIR" ]; then
        rm -rf "$NGINX_REF_DIR"
    fi
    NGINX_REF_PID=""
    NGINX_REF_DIR=""
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    serve)
        nginx_ref_start "${2:-1}"
        trap nginx_ref_stop EXIT
        trap 'exit 0' INT TERM
        echo "nginx reference at $NGINX_REF_URL (pid $NGINX_REF_PID); Ctrl-C stops it"
        wait "$NGINX_REF_PID" || true
        ;;
    *)
        echo "usage: $0 serve [WORKERS]   run the nginx reference (409 sold_out) until Ctrl-C"
        echo "       source $0; nginx_ref_start [WORKERS]; ...; nginx_ref_stop"
        [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]
        ;;
    esac
fi
