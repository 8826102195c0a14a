#!/usr/bin/env bash
# SIGKILL under load, then restart on the same ledger: 64 clients send completions to
# `distill-sim serve` for SECONDS (default 20); the server is killed with SIGKILL after
# KILL_AT seconds (default 8) and restarted on the same keys and ledger at once. Prints the
# clients' table (successes, failures, reconnects) and the ledger's answered lines: every
# success must be in the ledger; requests in flight at the kill may be in it without having
# reached their client (the ledger is committed before responses are sent).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/distill-sim"
[ -x "$bin" ] || (cd "$root" && cargo build --release)
port="${PORT:-18090}"
seconds="${SECONDS_LOAD:-20}"
kill_at="${KILL_AT:-8}"
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
serve() {
    "$bin" serve "$root/experiments/quickstart.yaml" --addr "127.0.0.1:$port" \
        --keys "$dir/keys.jsonl" --accounts 64 --ledger "$dir/ledger.jsonl" --time-scale 10 \
        >>"$dir/serve.log" 2>&1 &
    echo $!
}
up() {
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server did not come up:"; cat "$dir/serve.log"; exit 1
}
pid=$(serve); up
"$bin" bench --serve --target "127.0.0.1:$port" --keys "$dir/keys.jsonl" \
    --ledger "$dir/ledger.jsonl" --clients 64 --seconds "$seconds" >"$dir/load.md" &
load=$!
sleep "$kill_at"
kill -9 "$pid"
t_kill=$(date +%s.%N)
pid=$(serve); up
t_up=$(date +%s.%N)
wait "$load"
cat "$dir/load.md"
echo
echo "restart took $(python3 -c "print(f'{$t_up - $t_kill:.2f}')") s after the kill; server log:"
cat "$dir/serve.log"
kill "$pid"
