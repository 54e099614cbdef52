#!/usr/bin/env bash
# Side-by-side relay benchmark: our mediaproxy, rtpengine 10.5 in userspace mode
# (`--table=-1`) and a bare one-thread forwarder with a fixed port map (the ceiling; on
# epoll and on io_uring), each pinned to the same CPU and fed by the same generator (`bench`,
# pinned to the other CPU), over a sweep of call counts. Prints one table (see docs/performance.md for how to read it).
#
#   bench/compare.sh                          # 100,500,1000,2000 calls, 10 s per point
#   CALLS=100,1000,2000 SECONDS_PER_POINT=20 WORKERS=1 bench/compare.sh
#   TARGETS=ours,rtpengine,bare ROUNDS=5 bench/compare.sh   # each point 5 times, medians
#   SHAPE=phones NETNS=1 bench/compare.sh     # production's shape: a socket per phone leg,
#                                             # the generator in its own namespace over veth
#
# One run of one point swings by 15 % or more on a shared machine; with ROUNDS > 1 every
# point is measured that many times (targets in a rotated order) and a summary per call
# count gives each relay's median and its median paired ratio to rtpengine.
#
# rtpengine comes from Debian (`apt-get install rtpengine-daemon`, done here when missing);
# the benchmark starts and stops every relay itself, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-100,500,1000,2000}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-10}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-ours,rtpengine,bare,bare-uring}
SHAPE=${SHAPE:-shared}
extra=()
[ "${NETNS:-0}" = 1 ] && extra+=(--generator-netns)
if ! command -v rtpengine >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtpengine-daemon >/dev/null
fi
command -v taskset >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux >/dev/null
# The Debian package may start a system rtpengine; it would share the CPU being measured.
systemctl stop rtpengine-daemon 2>/dev/null || true
cargo build --release -q -p mediaproxy -p bench
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "rtpengine: $(rtpengine --version 2>&1 | head -n 1)"
./target/release/bench --targets "$TARGETS" --calls "$CALLS" \
  --seconds "$SECONDS_PER_POINT" --workers "$WORKERS" --rounds "$ROUNDS" \
  --shape "$SHAPE" "${extra[@]}"
