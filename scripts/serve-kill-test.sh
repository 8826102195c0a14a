#!/usr/bin/env bash
# SIGKILL under load, then restart on the same ledger: 64 clients send completions to
# `distill-sim serve` for SECONDS (default 20); the server is killed with SIGKILL after
# KILL_AT seconds (default 8) and restarted on the same keys and ledger at once. Prints the
# clients' table (successes, failures, reconnects) and the ledger's answered lines: every
# success must be in the ledger; requests in flight at the kill may be in it without having
# reached their client (the ledger is committed before responses are sent).
#
# LIVE=1 turns the live detectors on (volume above VOLUME queries per simulated day, default
# 100, a pass every simulated minute, a ban at once): the accounts are banned during the load,
# before the kill, and after the restart every banned account (an action line in the ledger)
# must still be refused (403) and every other served.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/distill-sim"
[ -x "$bin" ] || (cd "$root" && cargo build --release)
port="${PORT:-18090}"
seconds="${SECONDS_LOAD:-20}"
kill_at="${KILL_AT:-8}"
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
live=()
if [ "${LIVE:-0}" = 1 ]; then
    live=(--set traffic.enabled=true --set traffic.detectors.prada_w=null
          --set traffic.detectors.sync_share=null --set traffic.detectors.min_entropy=null
          --set traffic.detectors.mmd=null --set traffic.detectors.reasoning_share=null
          --set "traffic.detectors.volume_per_day=${VOLUME:-100}"
          --set traffic.detectors.check_minutes=1 --set traffic.detectors.action_delay_minutes=0)
fi
serve() {
    "$bin" serve "$root/experiments/quickstart.yaml" --addr "127.0.0.1:$port" \
        --keys "$dir/keys.jsonl" --accounts 64 --ledger "$dir/ledger.jsonl" --time-scale 10 \
        "${live[@]}" >>"$dir/serve.log" 2>&1 &
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
if [ "${LIVE:-0}" = 1 ]; then
    python3 - "$dir" "$port" <<'PY'
import json, sys, urllib.request, urllib.error
d, port = sys.argv[1], sys.argv[2]
keys = [json.loads(l)["key"] for l in open(f"{d}/keys.jsonl") if l.strip()]
banned = {json.loads(l)["account"] for l in open(f"{d}/ledger.jsonl") if '"action"' in l}
refused = served = wrong = 0
for a, k in enumerate(keys):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps({"model": "distill-sim-teacher", "prompt": "SORT 3 1 2", "max_tokens": 8}).encode(),
        headers={"Authorization": f"Bearer {k}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req).read(); code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    refused += code == 403 and a in banned
    served += code == 200 and a not in banned
    wrong += (code == 403) != (a in banned)
print(f"banned before the kill (action lines): {len(banned)}; after the restart: {refused} of them "
      f"refused (403), {served} of the {len(keys) - len(banned)} others served, {wrong} wrong")
sys.exit(1 if wrong else 0)
PY
fi
kill "$pid"
