#!/usr/bin/env bash
# Runs aknet_jax.main on every worker of a Cloud TPU VM slice: one process per worker host.
#
# Usage: launch/tpu_pod.sh -t TPU_NAME -z ZONE [-p PROJECT] [-r REMOTE_DIR] [-s SETUP] -- MAIN_ARGS
#   -t  the TPU VM's name (gcloud compute tpus tpu-vm list).
#   -z  its zone, e.g. us-central2-b.
#   -p  the GCP project (default: gcloud's configured project).
#   -r  the repository on the workers, relative to their home (default: aknet-jax).
#   -s  a shell command run on every worker first, in REMOTE_DIR, e.g. 'git pull && pip install -e .'.
#   MAIN_ARGS  the flags of python -m aknet_jax.main; --workdir must be storage that every worker
#       sees (an NFS/Filestore mount). No coordinator flags: JAX discovers the slice by itself.
#       $PYTHON picks the workers' interpreter (default: python3).
# Example:
#   launch/tpu_pod.sh -t my-v4-32 -z us-central2-b -- --config=configs/ssv2.py --workdir=/mnt/runs/ssv2
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

tpu="" zone="" project="" remote_dir="aknet-jax" setup=""
while getopts ":t:z:p:r:s:h" opt; do
  case "$opt" in
    t) tpu="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    p) project="$OPTARG" ;;
    r) remote_dir="$OPTARG" ;;
    s) setup="$OPTARG" ;;
    h) usage "help requested" ;;
    :) usage "-$OPTARG needs a value" ;;
    *) usage "unknown option -$OPTARG" ;;
  esac
done
shift $((OPTIND - 1))
if [[ "${1:-}" == "--" ]]; then shift; fi

[[ -n "$tpu" ]] || usage "-t TPU_NAME is required"
[[ -n "$zone" ]] || usage "-z ZONE is required"
[[ $# -gt 0 ]] || usage "the arguments of aknet_jax.main are missing (after --)"
has_workdir "$@" || usage "MAIN_ARGS need --workdir=DIR (storage every worker sees)"
command -v gcloud >/dev/null || usage "gcloud is not on PATH (install the Google Cloud CLI)"

# The same command on every worker; arguments are quoted for the remote shell.
remote="cd $(printf '%q' "$remote_dir")"
if [[ -n "$setup" ]]; then remote+=" && $setup"; fi
remote+=" && $(printf '%q' "${PYTHON:-python3}") -m aknet_jax.main$(printf ' %q' "$@")"

flags=(--zone="$zone" --worker=all)
if [[ -n "$project" ]]; then flags+=(--project="$project"); fi
exec gcloud compute tpus tpu-vm ssh "$tpu" "${flags[@]}" --command="$remote"
