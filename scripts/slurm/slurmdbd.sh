#!/usr/bin/env bash
# Stop or start only the accounting daemon of the cluster that start-test-cluster.sh runs (as root):
#   bash scripts/slurm/slurmdbd.sh stop    # sacct then fails; sinfo, squeue, sbatch and srun still work
#   bash scripts/slurm/slurmdbd.sh start   # returns once sacct answers again
# slurmctld keeps the job records it could not send and sends them when slurmdbd is back.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require_root
case "${1:-}" in
    stop) stop_daemon slurmdbd "$SLURMDBD_PID" ;;
    start) start_slurmdbd ;;
    *) echo "usage: $0 stop|start" >&2; exit 2 ;;
esac
