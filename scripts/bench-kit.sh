#!/usr/bin/env bash
# Runner kit overhead: kit runner vs bare tonic echo, same machine, same run (goal: kit/bare
# throughput >= 0.85). Two measurements, both against release builds on loopback:
#
# 1. The project's own Rust client (benches/kit_overhead.rs): round trips/s, p50/p99.
# 2. A neutral load generator, h2load (Debian's nghttp2-client), over h2c: 8 connections,
#    one stream each, in three placements:
#    - one CPU each: the servers pinned to one CPU, h2load to another; a fixed number of
#      calls per round, kit and bare alternating (5 rounds each, which goes first
#      alternating too; the kit/bare ratio of each round, then the median);
#    - side by side: both servers on that CPU at once, each with its own h2load, for the
#      same seconds per round; the ratio within each round, then the median (the
#      steadiest figure when the machine's speed drifts);
#    - CPUs shared: nothing pinned, rounds as in the first placement.
#    h2load only knows HTTP statuses, so the script checks the gRPC outcome itself: once
#    per server with nghttp (grpc-status 0 and the echoed message in the reply), and on
#    the kit for every call, from its own metrics (runs counted with code="ok" must equal
#    the calls sent; side by side, where h2load stops mid-call, lie between the calls
#    answered and the calls started).
#
# Tune with BENCH_H2LOAD_REQUESTS (calls per round, default 100000), BENCH_H2LOAD_SECONDS
# (length of a side-by-side round, default 10), BENCH_H2LOAD_ROUNDS
# (rounds per server and placement, default 5), BENCH_H2LOAD_CLIENTS
# (connections, default 8), BENCH_KIT_RUST_CLIENT=0 to skip measurement 1; the Rust
# bench's own variables (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONCURRENCY) apply to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

requests="${BENCH_H2LOAD_REQUESTS:-100000}"
rounds="${BENCH_H2LOAD_ROUNDS:-5}"
if ! [ "$rounds" -ge 1 ] 2>/dev/null; then
  echo "bench-kit: BENCH_H2LOAD_ROUNDS must be a whole number >= 1 (got '$rounds')" >&2
  exit 2
fi
connections="${BENCH_H2LOAD_CLIENTS:-8}"

if ! command -v h2load >/dev/null || ! command -v nghttp >/dev/null; then
  echo "bench-kit: installing h2load and nghttp (Debian package nghttp2-client)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -q nghttp2-client >/dev/null
fi

cargo build --release --locked -p test-runner --bins
if [ "${BENCH_KIT_RUST_CLIENT:-1}" != 0 ]; then
  echo "== Rust client (the project's own, sharing the CPUs with the servers)"
  cargo bench --locked -p test-runner --bench kit_overhead
fi

bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One gRPC message: the 5-byte length prefix (uncompressed) and a protobuf RunRequest
# {algorithm: "echo" (field 1), payload: the JSON below (field 2)}.
message='hello, plugworker'
python3 - "$work/request.bin" "$message" <<'PY'
import json, struct, sys
algorithm = b"echo"
payload = json.dumps({"message": sys.argv[2]}).encode()
assert len(algorithm) < 128 and len(payload) < 128  # one-byte protobuf lengths
body = b"\x0a" + bytes([len(algorithm)]) + algorithm + b"\x12" + bytes([len(payload)]) + payload
with open(sys.argv[1], "wb") as f:
    f.write(b"\x00" + struct.pack(">I", len(body)) + body)
PY

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

kit_flags=(--no-register)
# Plaintext gRPC has to be asked for where the kit serves mTLS by default.
if "$bin/test-runner" --help | grep -q -- '--insecure-plaintext'; then
  kit_flags+=(--insecure-plaintext)
fi

url() { echo "http://127.0.0.1:$1/plugworker.runner.v1.Runner/Run"; }

# One call with an independent HTTP/2 client; succeeds if the reply is grpc-status 0 and
# carries the echoed message.
call_ok() {
  local out
  out="$(nghttp -v -H ':method: POST' -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/request.bin" "$(url "$1")" 2>&1 | tr -d '\000')" || return 1
  grep -q 'grpc-status: 0' <<<"$out" && grep -qF "$message" <<<"$out"
}

# Starts the kit runner and the bare server, each under the command prefix given (empty,
# or a `taskset`), and waits until both answer a checked call. Sets kit_port, bare_port,
# metrics_port, kit_pid and bare_pid.
start_servers() {
  kit_port="$(free_port)"
  metrics_port="$(free_port)"
  bare_port="$(free_port)"
  # The kit runs with the log level a deployment has (RUST_LOG as set, default info).
  "$@" "$bin/test-runner" "${kit_flags[@]}" --listen "127.0.0.1:$kit_port" \
    --metrics-address "127.0.0.1:$metrics_port" --health-listen "127.0.0.1:$(free_port)" \
    >>"$work/kit.log" 2>&1 &
  kit_pid=$!
  pids+=("$kit_pid")
  "$@" "$bin/bare-echo" --listen "127.0.0.1:$bare_port" >>"$work/bare.log" 2>&1 &
  bare_pid=$!
  pids+=("$bare_pid")
  for port in "$kit_port" "$bare_port"; do
    for _ in $(seq 200); do
      call_ok "$port" && break
      sleep 0.1
    done
    if ! call_ok "$port"; then
      echo "bench-kit: the server on port $port does not answer the request with grpc-status 0" >&2
      cat "$work/kit.log" "$work/bare.log" >&2
      exit 1
    fi
  done
}

stop_servers() {
  kill "$kit_pid" "$bare_pid" 2>/dev/null || true
  wait "$kit_pid" "$bare_pid" 2>/dev/null || true
  pids=() # stopped: the exit trap must not signal these PIDs again
}

ok_runs() {
  curl -sf "http://127.0.0.1:$metrics_port/metrics" |
    sed -n 's/^plugworker_runner_runs_total{algorithm="echo",code="ok"} \([0-9]*\).*/\1/p'
}

# CPU seconds (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# h2load with the gRPC request against port $1, under the command prefix in
# h2load_prefix; the remaining arguments say how long it runs (-n CALLS or -D SECONDS).
h2load_grpc() {
  local port="$1"
  shift
  "${h2load_prefix[@]}" h2load "$@" -c "$connections" -m 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$work/request.bin" "$(url "$port")"
}

# 5 000 calls to each server before a placement's rounds.
warm_up() {
  h2load_round "$kit_port" 5000 "$kit_pid" >/dev/null
  h2load_round "$bare_port" 5000 "$bare_pid" >/dev/null
}

# Prints "req/s server-CPU-µs-per-call" of one h2load round against port $1 (server
# process $3), h2load run under the command prefix in h2load_prefix; fails unless every
# call got an HTTP 200. On a shared machine the CPU time the server spends per call is
# steadier than req/s, which also moves with whatever else the machine is doing.
h2load_round() {
  local out before after
  before="$(cpu_ticks "$3")"
  out="$(h2load_grpc "$1" -n "$2")"
  if ! grep -q "requests: $2 total, $2 started, $2 done, $2 succeeded, 0 failed, 0 errored" <<<"$out"; then
    echo "bench-kit: h2load round against port $1 had failures:" >&2
    echo "$out" >&2
    return 1
  fi
  after="$(cpu_ticks "$3")"
  echo "$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")" \
    "$(python3 -c "print(($after - $before) / $(getconf CLK_TCK) / $2 * 1e6)")"
}

# One placement: warm-up, then `rounds` rounds of kit, bare alternating; checks every kit
# call's gRPC status through the kit's own count and prints the placement's summary.
measure() {
  local label="$1" kit=() bare=() before after round kit_rps kit_us bare_rps bare_us
  warm_up
  before="$(ok_runs)"
  echo "h2load, $label: $connections connections, 1 stream each, $requests calls per round; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for round in $(seq "$rounds"); do
    # Which server goes first alternates, so a machine getting slower or faster during
    # the run does not favour one of them.
    if [ $((round % 2)) -eq 1 ]; then
      read -r kit_rps kit_us < <(h2load_round "$kit_port" "$requests" "$kit_pid")
      read -r bare_rps bare_us < <(h2load_round "$bare_port" "$requests" "$bare_pid")
    else
      read -r bare_rps bare_us < <(h2load_round "$bare_port" "$requests" "$bare_pid")
      read -r kit_rps kit_us < <(h2load_round "$kit_port" "$requests" "$kit_pid")
    fi
    kit+=("$kit_rps $kit_us")
    bare+=("$bare_rps $bare_us")
    printf '  round %d: kit %7.0f req/s (%5.1f µs CPU/call)   bare %7.0f req/s (%5.1f µs CPU/call)   kit/bare %.3f, CPU bare/kit %.3f\n' \
      "$round" "$kit_rps" "$kit_us" "$bare_rps" "$bare_us" \
      "$(python3 -c "print($kit_rps / $bare_rps)")" "$(python3 -c "print($bare_us / $kit_us)")"
  done
  after="$(ok_runs)"
  if [ "$((after - before))" -ne "$((rounds * requests))" ]; then
    echo "bench-kit: the kit counted $((after - before)) successful runs for $((rounds * requests)) calls" >&2
    exit 1
  fi
  echo "  every kit call answered grpc-status 0 (kit metrics: $((after - before)) ok runs)"
  python3 - "$label" "$rounds" "${kit[@]}" "${bare[@]}" <<'PY'
import statistics, sys
label, n = sys.argv[1], int(sys.argv[2])
rows = [tuple(map(float, v.split())) for v in sys.argv[3:]]
kit, bare = rows[:n], rows[n:]
med = lambda rows, i: statistics.median(r[i] for r in rows)
k, b = med(kit, 0), med(bare, 0)
kc, bc = med(kit, 1), med(bare, 1)
# The ratio within each round (kit and bare back to back, a few seconds apart) removes
# the machine's drift between rounds (not within one), which the ratio of the two
# medians does not.
r = statistics.median(kr[0] / br[0] for kr, br in zip(kit, bare))
c = statistics.median(br[1] / kr[1] for kr, br in zip(kit, bare))
print(f"  {label}, median of {n} rounds: kit {k:.0f} req/s, bare {b:.0f} req/s; "
      f"median of the per-round ratios kit/bare {r:.3f} (goal >= 0.85) "
      f"{'MET' if r >= 0.85 else 'NOT MET'}")
print(f"  server CPU per call, medians: kit {kc:.1f} µs, bare {bc:.1f} µs; "
      f"median of the per-round ratios bare/kit {c:.3f}")
PY
}

# Placement 2, side by side: both servers on one CPU at the same time, each loaded by
# its own h2load (both on the other CPU) for the same seconds. Whatever slows the machine
# during a round slows both alike, so the ratio within a round is the steadiest figure on
# a noisy machine; each server gets about half the CPU, so req/s are about half those
# above. Prints each round and the median of the per-round ratios.
side_by_side() {
  local label="$1" seconds="${BENCH_H2LOAD_SECONDS:-10}" before after round
  local kit_out="$work/side-kit.txt" bare_out="$work/side-bare.txt" ratios="$work/side-ratios.txt"
  local kit_t0 bare_t0 kit_t1 bare_t1 h2_kit h2_bare kit_done kit_started bare_done
  local kit_sum_done=0 kit_sum_started=0
  : >"$ratios"
  warm_up
  echo "h2load, $label: $connections connections, 1 stream each, per server, ${seconds} s per round; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  before="$(ok_runs)"
  for round in $(seq "$rounds"); do
    kit_t0="$(cpu_ticks "$kit_pid")"
    bare_t0="$(cpu_ticks "$bare_pid")"
    h2load_grpc "$kit_port" -D "$seconds" >"$kit_out" &
    h2_kit=$!
    h2load_grpc "$bare_port" -D "$seconds" >"$bare_out" &
    h2_bare=$!
    # Each load generator's outcome is judged from its output below.
    wait "$h2_kit" || true
    wait "$h2_bare" || true
    kit_t1="$(cpu_ticks "$kit_pid")"
    bare_t1="$(cpu_ticks "$bare_pid")"
    for out in "$kit_out" "$bare_out"; do
      if ! grep -q "succeeded, 0 failed, 0 errored, 0 timeout" "$out"; then
        echo "bench-kit: a side-by-side round had failures:" >&2
        cat "$out" >&2
        exit 1
      fi
    done
    read -r kit_started kit_done < <(sed -n 's/^requests: [0-9]* total, \([0-9]*\) started, \([0-9]*\) done.*/\1 \2/p' "$kit_out") || true
    bare_done="$(sed -n 's/^requests: [0-9]* total, [0-9]* started, \([0-9]*\) done.*/\1/p' "$bare_out")"
    if ! [ "${kit_done:-0}" -gt 0 ] || ! [ "${bare_done:-0}" -gt 0 ]; then
      echo "bench-kit: a side-by-side round answered no calls:" >&2
      cat "$kit_out" "$bare_out" >&2
      exit 1
    fi
    kit_sum_done=$((kit_sum_done + kit_done))
    kit_sum_started=$((kit_sum_started + kit_started))
    # Prints the round and appends its two ratios to $ratios for the summary.
    python3 - "$round" "$seconds" "$kit_done" "$bare_done" \
      "$((kit_t1 - kit_t0))" "$((bare_t1 - bare_t0))" "$(getconf CLK_TCK)" "$ratios" <<'PY'
import sys
round_, seconds, kit, bare, kit_ticks, bare_ticks, tck, ratios = sys.argv[1:]
seconds, kit, bare = float(seconds), int(kit), int(bare)
kit_us = int(kit_ticks) / int(tck) / kit * 1e6
bare_us = int(bare_ticks) / int(tck) / bare * 1e6
print(f"  round {round_}: kit {kit / seconds:7.0f} req/s ({kit_us:5.1f} µs CPU/call)   "
      f"bare {bare / seconds:7.0f} req/s ({bare_us:5.1f} µs CPU/call)   "
      f"kit/bare {kit / bare:.3f}, CPU bare/kit {bare_us / kit_us:.3f}")
with open(ratios, "a") as f:
    print(f"{kit / bare} {bare_us / kit_us}", file=f)
PY
  done
  after="$(ok_runs)"
  # With a duration, h2load stops with each connection's last call in flight: the kit may
  # have answered those too.
  if [ "$((after - before))" -lt "$kit_sum_done" ] || [ "$((after - before))" -gt "$kit_sum_started" ]; then
    echo "bench-kit: the kit counted $((after - before)) successful runs; h2load got $kit_sum_done answers of $kit_sum_started calls" >&2
    exit 1
  fi
  echo "  every kit call answered grpc-status 0 (kit metrics: $((after - before)) ok runs, h2load: $kit_sum_done answered)"
  python3 - "$label" "$ratios" <<'PY'
import statistics, sys
label = sys.argv[1]
rows = [tuple(map(float, line.split())) for line in open(sys.argv[2])]
r = statistics.median(row[0] for row in rows)
c = statistics.median(row[1] for row in rows)
print(f"  {label}, median of {len(rows)} per-round ratios: kit/bare {r:.3f} (goal >= 0.85) "
      f"{'MET' if r >= 0.85 else 'NOT MET'}; server CPU per call bare/kit {c:.3f}")
PY
}

echo "== h2load: request bytes checked with nghttp on both servers (grpc-status 0, message echoed)"
# Placement 1, the server alone on one CPU and h2load on another: the server's own
# throughput, with neither side taking CPU time from the other (what the ratio is about).
# Placement 2 (side_by_side above) runs with the pinned pair of placement 1.
# Placement 3, no pinning: servers and h2load share every CPU, as in the first measurement
# of this hop; on 2 cores the load generator's share moves the figures more.
# The CPUs this script may use (a cpuset may not start at 0): the first for h2load, the
# last for the servers.
read -r first_cpu last_cpu < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[-1])')
if [ "$first_cpu" != "$last_cpu" ]; then
  h2load_prefix=(taskset -c "$first_cpu")
  start_servers taskset -c "$last_cpu"
  measure "one CPU each (server on CPU $last_cpu, h2load on CPU $first_cpu)"
  side_by_side "side by side (both servers on CPU $last_cpu at once, each h2load on CPU $first_cpu)"
  stop_servers
fi
h2load_prefix=()
start_servers
measure "CPUs shared"
