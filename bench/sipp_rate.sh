#!/usr/bin/env bash
# Call-rate benchmark: SIPp's built-in UAC -> signaling (embedded media proxy, relay mode,
# every call allocates, updates and releases media over gRPC) -> SIPp's built-in UAS.
# For each rate it runs RATE x SECONDS calls (INVITE/100/180/200/ACK/BYE, no RTP) and prints
# successful and failed calls and INVITE->200 latency percentiles. Everything shares this
# machine's cores, SIPp included: read the figures side by side, not as absolutes.
#
# BINARIES compares builds in one run ("name=path ..."; default: this tree's release build):
# every rate is run once per build, builds in turn, each against a freshly started signaling.
# ROUNDS repeats the whole sweep. "cpu ms" is signaling's own CPU time (user + system, the
# embedded media proxy included) over the run, "us/call" that divided by the calls made: the
# figure to compare builds by, since SIPp's latencies come in 4 ms steps.
# MODES chooses where media goes: "embedded" (default: signaling's own proxy) and/or "poolN"
# (N separate mediaproxy processes on loopback, started fresh for every run, the relay range
# split between them). "place p99" is the p99 of a new call's whole placement (node choice,
# both allocations, the update) from signaling's own histogram, as its bucket's upper bound.
#
#   bench/sipp_rate.sh                 # rates 100 200 300 400, 10 s each
#   RATES="300 500" SECONDS_PER_RATE=20 bench/sipp_rate.sh
#   BINARIES="before=/tmp/old/signaling after=target/release/signaling" bench/sipp_rate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"100 200 300 400"}
ROUNDS=${ROUNDS:-1}
MODES=${MODES:-embedded}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-10}
command -v sipp >/dev/null || { echo "sipp is needed: apt-get install sip-tester" >&2; exit 1; }
if [ -z "${BINARIES:-}" ]; then
  cargo build --release -q -p signaling
  BINARIES="ours=./target/release/signaling"
fi
case "$MODES" in *pool*) cargo build --release -q -p mediaproxy ;; esac
out=$(mktemp -d -t sipp-rate.XXXXXX)
sig_pid=""; uas_pid=""; proxy_pids=""
stop_proxies() {
  for pid in $proxy_pids; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  proxy_pids=""
}
# Starts N media proxies splitting 16000-31999 and sets media_args to their --mediaproxy
# arguments. (Not run in a $(...) subshell: proxy_pids must reach stop_proxies.)
start_proxies() {
  local n=$1 span=$((16000 / $1)) i
  media_args=""
  for i in $(seq 0 $((n - 1))); do
    local low=$((16000 + i * span)) port=$((15100 + i))
    ./target/release/mediaproxy --grpc "127.0.0.1:$port" --metrics 127.0.0.1:0 \
      --ports "$low-$((low + span - 1))" --node-id "bench-$i" --log warn >"$out/proxy-$i.log" 2>&1 &
    proxy_pids="$proxy_pids $!"
    media_args="$media_args --mediaproxy http://127.0.0.1:$port"
  done
}
stop_signaling() {
  if [ -n "$sig_pid" ]; then
    kill -TERM "$sig_pid" 2>/dev/null && wait "$sig_pid" 2>/dev/null || true
    sig_pid=""
  fi
}
cleanup() {
  [ -n "$uas_pid" ] && kill "$uas_pid" 2>/dev/null || true
  stop_signaling
  stop_proxies
}
trap cleanup EXIT
sipp -sn uas -i 127.0.0.1 -p 15062 -nostdin -bg >/dev/null 2>&1 || true
uas_pid=$(pgrep -f "sipp -sn uas -i 127.0.0.1 -p 15062" | head -1)
printf "%-18s %6s %7s %7s %7s %9s %9s %9s %9s %8s %8s %10s\n" build rate calls ok failed "p50 ms" "p90 ms" "p99 ms" "max ms" "cpu ms" "us/call" "place p99"
ticks=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
for rate in $RATES; do
  for mode in $MODES; do
  for entry in $BINARIES; do
    name=${entry%%=*}; binary=${entry#*=}
    media_args="--ports 16000-31999"
    if [ "$mode" != embedded ]; then
      start_proxies "${mode#pool}"
    fi
    [ "$MODES" = embedded ] || name="$name/$mode"
    rm -f "$out/cdr.db"
    # shellcheck disable=SC2086
    "$binary" --sip 127.0.0.1:15060 --metrics 127.0.0.1:15070 \
      --route "=sip:127.0.0.1:15062" --trusted 127.0.0.0/8 --cdr "sqlite://$out/cdr.db" \
      $media_args --log warn >"$out/signaling-${name//\//-}.log" 2>&1 &
    sig_pid=$!
    sleep 1.5
    calls=$((rate * SECONDS_PER_RATE))
    rm -rf "$out/run" && mkdir -p "$out/run"
    # -trace_rtt writes uac_<pid>_rtt.csv into the working directory.
    (cd "$out/run" && timeout $((SECONDS_PER_RATE + 60)) sipp -sn uac 127.0.0.1:15060 -i 127.0.0.1 -p 15061 \
      -r "$rate" -m "$calls" -l $((rate * 4)) -nostdin -timeout $((SECONDS_PER_RATE + 40))s \
      -trace_stat -stf "$out/uac_stat.csv" -trace_rtt -rtt_freq 1 >/dev/null 2>&1) || true
    # utime + stime (fields 14 and 15 of /proc/PID/stat; the name in field 2 has no spaces).
    cpu_ms=$(awk -v t="$ticks" '{ printf "%d", ($14 + $15) * 1000 / t }' "/proc/$sig_pid/stat")
    place_p99=$(python3 -c "
import urllib.request
buckets, count = [], 0
for line in urllib.request.urlopen('http://127.0.0.1:15070/metrics').read().decode().splitlines():
    if line.startswith('signaling_mediaproxy_request_duration_seconds_bucket') and 'method=\"place\"' in line:
        le = line.split('le=\"')[1].split('\"')[0]
        buckets.append((float('inf') if le == '+Inf' else float(le), float(line.split()[-1])))
    if line.startswith('signaling_mediaproxy_request_duration_seconds_count') and 'method=\"place\"' in line:
        count = float(line.split()[-1])
for le, n in sorted(buckets):
    if count and n >= 0.99 * count:
        print('<=%g ms' % (le * 1000)); break
else:
    print('-')")
    stop_signaling
    stop_proxies
    cat "$out"/run/*_rtt.csv > "$out/uac_rtt.csv" 2>/dev/null || : > "$out/uac_rtt.csv"
    ok=$(python3 -c "
import sys, csv
rows = list(csv.reader(open('$out/uac_stat.csv'), delimiter=';'))
head, last = rows[0], rows[-1]
col = lambda name: int(last[head.index(name)])
print(col('SuccessfulCall(C)'), col('FailedCall(C)'))")
    read -r success failed <<<"$ok"
    python3 - "$out/uac_rtt.csv" "$name" "$rate" "$calls" "$success" "$failed" "$cpu_ms" "$place_p99" <<'PY'
import sys
path, name, rate, calls, ok, failed, cpu_ms, place = sys.argv[1:]
values = []
for line in open(path):
    parts = line.strip().split(';')
    if len(parts) >= 2:
        try:
            values.append(float(parts[1]))
        except ValueError:
            pass
values.sort()
pick = lambda p: values[min(len(values) - 1, int(round((len(values) - 1) * p)))] if values else float('nan')
per_call = int(cpu_ms) * 1000 / max(1, int(ok) + int(failed))
print(f"{name:<18} {rate:>6} {calls:>7} {ok:>7} {failed:>7} {pick(0.5):9.2f} {pick(0.9):9.2f} {pick(0.99):9.2f} {values[-1] if values else float('nan'):9.2f} {cpu_ms:>8} {per_call:8.0f} {place:>10}")
PY
  done
  done
done
done
