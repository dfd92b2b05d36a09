# Helpers shared by bench/compare.sh and bench/pgo.sh. Source it after
# defining die(); LOGS_HINT is appended to wait_ok's error message.

# N free TCP ports on 127.0.0.1, space-separated. They are free when
# asked; the scripts bind them right after.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_ok URL WHAT [TRIES]: wait until URL answers 200 (the server is up
# and its route works), 0.1 s between tries (default 100).
wait_ok() {
    local url=$1 what=$2 tries=${3:-100} code=none
    for _ in $(seq 1 "$tries"); do
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    die "$what did not answer 200 at $url (last: $code)${LOGS_HINT:-}"
}

# make_cert DIR: a self-signed ECDSA P-256 certificate for localhost and
# 127.0.0.1 in DIR: cert.pem, key.pem, and combined.pem for HAProxy.
make_cert() {
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1/key.pem" -out "$1/cert.pem" -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        2>/dev/null
    cat "$1/cert.pem" "$1/key.pem" >"$1/combined.pem"
}
