#!/bin/bash
# Side by side, in one run: coturn (Debian's package, one relay thread on core 1, load by
# turnutils_uclient on core 0, via ../shared/bench/relay/), Natter's relay (the `relay`
# bench: natter-supernode on core 1, its load generator on core 0) and the bare forwarder
# (the same bench with NATTER_RELAY_TARGET=bare: recvmmsg/sendmmsg and nothing else, the
# practical limit of the core, driven by the same load generator). Prints the three figures
# (highest relayed packets/s under 0.5 % loss, CPU per relayed packet) and the ratios.
#
# Usage: supernode/benches/relay-vs-coturn.sh
# Environment:
#   RELAY_REF      the coturn scripts [<repo>/../shared/bench/relay]
#   COTURN_GRID    coturn allocations per load point [1232 1296 1360 1424] (100 relayed pps each)
#   NATTER_CALLS   Natter calls per load point [1500,2000,2300,2600,2900,3200] (100 relayed pps each)
#   BARE           1 = also run the bare forwarder over NATTER_CALLS [1]
#   REPS           repetitions of both series [1]
#   NATTER_RELAY_WINDOW_SECS  Natter's measured window [20]
#   NATTER_RELAY_RT  1 = both servers and both load generators under SCHED_FIFO (chrt -f 20,
#                    root): for a machine busy with other work, where pinned processes are
#                    otherwise starved and drop datagrams while idle [0]
# Needs root only to install coturn when it is missing. Logs: $RELAYBENCH_DIR [/tmp/relaybench].
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REF=${RELAY_REF:-$ROOT/../shared/bench/relay}
GRID=${COTURN_GRID:-"1232 1296 1360 1424"}
CALLS=${NATTER_CALLS:-"1500,2000,2300,2600,2900,3200"}
REPS=${REPS:-1}
export RELAYBENCH_DIR=${RELAYBENCH_DIR:-/tmp/relaybench}
mkdir -p "$RELAYBENCH_DIR/logs"
[ -x "$REF/run_coturn.sh" ] || { echo "no coturn scripts at $REF (set RELAY_REF)"; exit 1; }
if ! command -v turnserver >/dev/null || ! command -v turnutils_uclient >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y coturn >/dev/null
    # The package may start its own service; the bench starts its own coturn.
    systemctl stop coturn 2>/dev/null || true
  else
    echo "coturn is not installed: run as root or apt-get install coturn"; exit 1
  fi
fi
STAMP=$(date +%Y%m%d-%H%M%S)
CLOG=$RELAYBENCH_DIR/logs/side-by-side-$STAMP-coturn.txt
NLOG=$RELAYBENCH_DIR/logs/side-by-side-$STAMP-natter.txt
BLOG=$RELAYBENCH_DIR/logs/side-by-side-$STAMP-bare.txt
: > "$BLOG"
echo "side-by-side relay run $STAMP on $(nproc) cores; logs $CLOG $NLOG $BLOG"
(cd "$ROOT" && cargo bench -p natter-supernode --bench relay --no-run >/dev/null 2>&1)
RT=()
[ "${NATTER_RELAY_RT:-0}" = 1 ] && RT=(chrt -f 20)
for rep in $(seq 1 "$REPS"); do
  for M in $GRID; do
    "$REF/stop_coturn.sh"; sleep 1; "$REF/start_coturn.sh" >/dev/null; sleep 2
    [ ${#RT[@]} -gt 0 ] && chrt -a -f -p 20 "$(cat "$RELAYBENCH_DIR/coturn.pid")" >/dev/null
    echo "##### rep=$rep M=$M $(date +%T) fresh coturn pid $(cat "$RELAYBENCH_DIR/coturn.pid")" >> "$CLOG"
    "${RT[@]}" "$REF/run_coturn.sh" "$M" 8 2500 "r$rep" >> "$CLOG" 2>&1
  done
  "$REF/stop_coturn.sh"
  echo "##### rep=$rep natter $(date +%T)" >> "$NLOG"
  (cd "$ROOT" && NATTER_RELAY_CALLS=$CALLS cargo bench -p natter-supernode --bench relay 2>/dev/null) >> "$NLOG"
  if [ "${BARE:-1}" = 1 ]; then
    echo "##### rep=$rep bare $(date +%T)" >> "$BLOG"
    (cd "$ROOT" && NATTER_RELAY_TARGET=bare NATTER_RELAY_CALLS=$CALLS cargo bench -p natter-supernode --bench relay 2>/dev/null) >> "$BLOG"
  fi
done
echo "--- coturn"; python3 "$REF/summarize.py" "$CLOG" coturn | tee "$CLOG.summary"
echo "--- natter"; grep -E "^ *calls|^ *[0-9]+ +[0-9]+ |^== natter" "$NLOG"
[ -s "$BLOG" ] && { echo "--- bare forwarder"; grep -E "^ *calls|^ *[0-9]+ +[0-9]+ |^== bare" "$BLOG"; }
python3 - "$CLOG" "$NLOG" "$BLOG" <<'PY'
import re, statistics, sys
c = open(sys.argv[1]).read(); n = open(sys.argv[2]).read(); b = open(sys.argv[3]).read()
# coturn: per load point, relayed pps and loss and server CPU, best passing point per rep
best_c = {}
for block in re.split(r'(?=##### rep=)', c):
    m = re.match(r'##### rep=(\d+) M=(\d+)', block)
    if not m: continue
    rep = int(m.group(1))
    pps = re.search(r'offered relayed pps=(\d+)', block); loss = re.search(r'loss = ([0-9.]+) %', block)
    cpu = re.search(r'PROC coturn .*: +([0-9.]+)%', block)
    if pps and loss and float(loss.group(1)) < 0.5:
        v = (int(pps.group(1)), float(cpu.group(1)) if cpu else float('nan'))
        if v[0] > best_c.get(rep, (0,))[0]: best_c[rep] = v
def best(log, name):
    return [(float(a), int(k), float(u)) for a, k, u in re.findall(r'== ' + name + r': highest relayed packets/s under 0.5 % loss: ([0-9.]+) \((\d+) calls\), ([0-9.]+) us', log)]
best_n = best(n, 'natter'); best_b = best(b, 'bare')
if not best_c or not best_n:
    print("ratio: missing a passing point (coturn %s, natter %s)" % (best_c, best_n)); sys.exit(0)
cm = statistics.median(v[0] for v in best_c.values()); nm = statistics.median(v[0] for v in best_n)
cus = statistics.median(1e4 * v[1] / v[0] for v in best_c.values())  # percent of a core / pps -> us
print(f"coturn: {cm:.0f} relayed pkts/s at <0.5 % loss (median of {len(best_c)}), ~{cus:.2f} us CPU/pkt (coturn process)")
print(f"natter: {nm:.0f} relayed pkts/s at <0.5 % loss (median of {len(best_n)}), {statistics.median(v[2] for v in best_n):.2f} us CPU/pkt (supernode + ksoftirqd)")
print(f"ratio natter/coturn: {nm/cm:.2f}x  (target 1.8x)")
if best_b:
    bm = statistics.median(v[0] for v in best_b); bus = statistics.median(v[2] for v in best_b)
    nus = statistics.median(v[2] for v in best_n)
    print(f"bare:   {bm:.0f} relayed pkts/s at <0.5 % loss (median of {len(best_b)}), {bus:.2f} us CPU/pkt (forwarder + ksoftirqd)")
    print(f"natter/bare: {nm/bm:.2f}x packets/s, {nus/bus:.2f}x CPU per packet (the relay's own work beyond recvmmsg/sendmmsg)")
print("note: a Natter figure at the top of its grid may be capped by the grid or by the load generator's core; see its table")
PY
