#!/usr/bin/env bash
# Starts N processes of aknet_jax.main on this machine, as a multi-host run on loopback.
#
# Usage: launch/local.sh -n NUM_PROCESSES -d DEVICES_PER_PROCESS [-p PORT] [-l LOG_DIR] -- MAIN_ARGS
#   -n  number of processes (>= 1); process 0 hosts the coordinator on 127.0.0.1.
#   -d  CPU devices forced in each process (JAX_NUM_CPU_DEVICES); the run has N x D devices.
#   -p  coordinator port (default: a free one, found by binding port 0).
#   -l  write process i's output to LOG_DIR/process_i.log (default: this terminal, lines
#       prefixed with "[i] ").
#   MAIN_ARGS  the flags of python -m aknet_jax.main (--config=..., --workdir=..., --mode=...);
#       the coordinator flags are added here. $PYTHON picks the interpreter (default: python).
# Example:
#   launch/local.sh -n 2 -d 2 -- --config=configs/synthetic.py:tiny,batch=8 --workdir=/tmp/run
# Cross-process collectives on CPU use gloo (JAX's TCP collectives). If one process fails, the
# others are stopped and the script exits with its status.
set -euo pipefail

has_workdir() {
  local a
  for a in "$@"; do
    if [[ "$a" == --workdir=?* || "$a" == --workdir ]]; then return 0; fi
  done
  return 1
}

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "error: $1" >&2
  exit 2
}

num_processes="" devices="" port="" log_dir=""
while getopts ":n:d:p:l:h" opt; do
  case "$opt" in
    n) num_processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h) usage "help requested" ;;
    :) usage "-$OPTARG needs a value" ;;
    *) usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
if [[ "${1:-}" == "--" ]]; then shift; fi

[[ -n "$num_processes" ]] || usage "-n NUM_PROCESSES is required"
[[ -n "$devices" ]] || usage "-d DEVICES_PER_PROCESS is required"
[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || usage "-n must be a positive integer, got '$num_processes'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || usage "-d must be a positive integer, got '$devices'"
[[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || usage "-p must be a port number, got '$port'"
[[ $# -gt 0 ]] || usage "the arguments of aknet_jax.main are missing (after --), e.g. --workdir=DIR"
has_workdir "$@" || usage "the arguments of aknet_jax.main need --workdir=DIR"

python="${PYTHON:-python}"
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
if [[ -n "$log_dir" ]]; then mkdir -p "$log_dir"; fi

# Each process: its own D CPU devices (the XLA flag for JAX releases before jax_num_cpu_devices),
# gloo for the cross-process collectives, and this checkout importable from any directory.
export JAX_PLATFORMS=cpu
export JAX_NUM_CPU_DEVICES="$devices"
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  cmd=("$python" -m aknet_jax.main "$@" --coordinator_address="127.0.0.1:$port"
       --num_processes="$num_processes" --process_id="$i")
  if [[ -n "$log_dir" ]]; then
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  else
    "${cmd[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  fi
  pids+=("$!")
done

# Polls rather than `wait -n` (bash >= 4.3): the first process to fail stops the others.
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    else
      code=0
      wait "$pid" || code=$?
      if ((code != 0 && status == 0)); then
        status=$code
        echo "local.sh: process $pid exited with status $code; stopping the others" >&2
        stop_all
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if ((${#running[@]} > 0)); then sleep 1; fi
done
exit "$status"
