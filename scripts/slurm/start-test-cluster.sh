#!/usr/bin/env bash
# A single-node Slurm cluster with accounting on this machine, for the tests marked `slurm` and for CI.
# As root on Debian (bookworm: Slurm 22.05), no systemd needed; under a minute the first time (package installs),
# a few seconds when the packages are there. Idempotent: if the cluster already answers `sinfo` and `sacct`, it
# says so and exits 0; daemons that already run are kept.
#
#   sudo bash scripts/slurm/start-test-cluster.sh
#   sudo bash scripts/slurm/stop-test-cluster.sh
#   sudo bash scripts/slurm/slurmdbd.sh stop|start    # only accounting: sacct fails while it is stopped
#
# Daemons, in start order, with their pid files under /run and logs under /var/log: munged, mariadbd, slurmdbd,
# slurmctld, slurmd. The cluster is `losslabtest`, one node (this host, `hostname -s`) with all its CPUs and its
# memory less a margin, in the partitions `debug` (the default) and `gpu` (README.md's Slurm example; its two
# GPUs are counted, not there).
# No cgroup plugins (proctrack/linuxproc, task/none).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CLUSTER=losslabtest
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

host_state() {  # the node's state as sinfo shows it (idle, mixed, allocated, idle*, down*, drained, ...)
    timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1
}
node_up() { [[ "$(host_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
cluster_works() { node_up && sacct_works; }

write_if_changed() {  # write_if_changed FILE MODE OWNER < content: 0 if FILE changed, 1 if it was already so
    local new
    new="$(cat)"
    if [[ -f "$1" && "$(cat "$1")" == "$new" ]]; then
        return 1
    fi
    printf '%s\n' "$new" >"$1"
    chmod "$2" "$1"
    chown "$3" "$1"
}

require_root
HOST="$(hostname -s)"

cpus="$(nproc)"
total_mb="$(free -m | awk '/^Mem:/ {print $2}')"
margin_mb=$((total_mb / 10 > 256 ? total_mb / 10 : 256))
memory_mb=$((total_mb - margin_mb))

# the accounting database's password: kept from an earlier run, else new
password=
[[ -f /etc/slurm/slurmdbd.conf ]] && password="$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf)"
[[ -n "$password" ]] || password="$(tr -dc A-Za-z0-9 </dev/urandom | head -c 24 || true)"

SLURM_CONF="$(cat <<CONF
# Written by scripts/slurm/start-test-cluster.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURMCTLD_LOG
SlurmdLogFile=$SLURMD_LOG
# no cgroup plugins: they need a cgroup setup that test machines and containers often lack
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cores and memory are what jobs ask for: jobs with --mem below the node's share it
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
# finished jobs stay in slurmctld's memory (scontrol show job, squeue -t all) for a day
MinJobAge=86400
# batch jobs may be requeued (scontrol requeue, submitit's preemption and timeout handling)
JobRequeue=1
# scancel: SIGTERM, then SIGKILL after KillWait seconds
KillWait=10
# a requeued job may start again after this many seconds (default 120); also job steps' credential lifetime
AuthInfo=cred_expire=10
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
# memory is enforced as on a production cluster, without cgroups: a task whose processes' memory (PSS, summed)
# exceeds its --mem is killed at the next sample, once a second, and says so in its stderr
JobAcctGatherParams=OverMemoryKill,UsePss
JobAcctGatherFrequency=task=1
JobCompType=jobcomp/none
# two GPUs that are not there: gres.conf points Slurm at two null devices, so jobs that ask for a GPU are
# scheduled and get CUDA_VISIBLE_DEVICES, and train on the CPU, as there is no CUDA device
GresTypes=gpu
NodeName=$HOST CPUs=$cpus RealMemory=$memory_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
# the same node again, for README.md's Slurm example (hydra.launcher.partition=gpu)
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
)"
SLURMDBD_CONF="$(cat <<CONF
# Written by scripts/slurm/start-test-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
LogFile=$SLURMDBD_LOG
PidFile=$SLURMDBD_PID
CONF
)"

# (sinfo takes about 10 s to give up on a controller that does not run: the pid files first)
if running "$SLURMCTLD_PID" && running "$SLURMD_PID" && running "$SLURMDBD_PID" \
    && [[ "$(cat /etc/slurm/slurm.conf)" == "$SLURM_CONF" ]] && cluster_works; then
    say "already running on $HOST (sinfo: $(host_state); sacct works); nothing to do"
    exit 0
fi

# ---- packages
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # keep the packages' init scripts from starting daemons: this script starts them, in order
    added_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install failed"
    if [[ -n "$added_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi
    say "packages installed after $SECONDS s"
fi

# ---- configuration
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld /var/log/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge /var/log/munge
chown mysql:mysql /run/mysqld

slurm_conf_changed=
write_if_changed /etc/slurm/slurm.conf 644 root:root <<<"$SLURM_CONF" && slurm_conf_changed=1
GPUS=/var/spool/slurmd/counted-gpus
mkdir -p "$GPUS"
for gpu in 0 1; do [[ -c "$GPUS/gpu$gpu" ]] || mknod "$GPUS/gpu$gpu" c 1 3; done  # /dev/null's numbers
write_if_changed /etc/slurm/gres.conf 644 root:root <<<"NodeName=$HOST Name=gpu File=$GPUS/gpu[0-1]" \
    && slurm_conf_changed=1
write_if_changed /etc/slurm/slurmdbd.conf 600 slurm:slurm <<<"$SLURMDBD_CONF" || true

if [[ -n "$slurm_conf_changed" ]] && { running "$SLURMCTLD_PID" || running "$SLURMD_PID"; }; then
    say "slurm.conf changed: restarting slurmctld and slurmd"
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$SLURMCTLD_PID"
fi

# ---- munged
if ! running "$MUNGED_PID"; then
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (the munge package creates it)"
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --log-file="$MUNGED_LOG" --pid-file="$MUNGED_PID" \
        || die "munged did not start" "$MUNGED_LOG"
fi
munge_works() { munge -n | unmunge; }
wait_for 20 "munged" "$MUNGED_LOG" munge_works

# ---- mariadbd and the accounting database
if ! running "$MARIADBD_PID"; then
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        say "creating the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null || die "mariadb-install-db failed"
    fi
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$MARIADBD_PID" --log-error="$MARIADBD_LOG" \
        </dev/null >/dev/null 2>&1 &
fi
wait_for 60 "mariadbd" "$MARIADBD_LOG" mariadb-admin ping
mariadb -u root <<SQL || die "could not create the accounting database" "$MARIADBD_LOG"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---- slurmdbd, and the cluster in accounting
start_slurmdbd
if ! timeout 15 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    say "registering cluster $CLUSTER in accounting"
    timeout 15 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed" "$SLURMDBD_LOG"
fi

# ---- slurmctld, slurmd
if ! running "$SLURMCTLD_PID"; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start" "$SLURMCTLD_LOG"
fi
ctld_up() { timeout 10 scontrol ping | grep -q "is UP"; }
wait_for 60 "slurmctld" "$SLURMCTLD_LOG" ctld_up

if ! running "$SLURMD_PID"; then
    say "starting slurmd"
    slurmd || die "slurmd did not start" "$SLURMD_LOG"
fi
node_responds() { [[ -n "$(host_state)" && "$(host_state)" != *'*' ]]; }  # a trailing * : not responding
wait_for 60 "slurmd" "$SLURMD_LOG" node_responds
if ! node_up; then  # drained or down from an earlier run: back to service
    say "node $HOST is $(host_state); resuming it"
    scontrol update nodename="$HOST" state=resume || true
fi
wait_for 30 "node $HOST (state $(host_state))" "$SLURMD_LOG" node_up

# ---- checks: what the tests use
timeout 10 sinfo || die "sinfo failed" "$SLURMCTLD_LOG"
others="$(squeue -h -t PD,R,CG | wc -l)"
if ((others)); then  # a free core could be minutes away
    say "the node has $others queued or running jobs: the srun and sbatch checks are left out"
    works="sinfo and sacct work"
else
    ran="$(timeout 60 srun -t 1 hostname)" || die "srun hostname failed" "$SLURMD_LOG"
    [[ "$ran" == "$HOST" ]] || die "srun hostname printed '$ran', not '$HOST'"
    job="$(timeout 30 sbatch --parsable -t 1 -o /dev/null --wrap true)" || die "sbatch failed" "$SLURMCTLD_LOG"
    sacct_completed() { [[ "$(sacct -n -X -P -j "$job" -o State)" == COMPLETED ]]; }
    wait_for 60 "accounting (sacct -j $job reports the batch job COMPLETED)" "$SLURMDBD_LOG" sacct_completed
    works="sinfo, srun, sbatch and sacct work"
fi
say "up on $HOST ($cpus CPUs, ${memory_mb} MB): $works; started in $SECONDS s"
