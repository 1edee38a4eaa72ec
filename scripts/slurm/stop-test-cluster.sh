#!/usr/bin/env bash
# Stop the single-node Slurm cluster that start-test-cluster.sh started: each daemon by its pid file, in the reverse
# of the start order, waiting until it is gone. Idempotent: daemons that do not run are skipped.
# Jobs still running keep their processes (slurmstepd); a restarted slurmd takes them up again.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require_root
if running "$SLURMCTLD_PID"; then
    active="$(timeout 10 squeue -h -t R,CG 2>/dev/null | wc -l || true)"
    ((active == 0)) || say "$active jobs still run; their processes keep running without slurmd"
fi
stop_daemon slurmd "$SLURMD_PID"
stop_daemon slurmctld "$SLURMCTLD_PID"
stop_daemon slurmdbd "$SLURMDBD_PID"
stop_daemon mariadbd "$MARIADBD_PID"
stop_daemon munged "$MUNGED_PID"
say "stopped"
