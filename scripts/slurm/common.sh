# Shared by the scripts in scripts/slurm/ (sourced, not run): the daemons' pid and log files, and bounded waits.
# Every path here is a Debian package's default or lies under /etc/slurm, /run, /var/spool or /var/log.

MUNGED_PID=/run/munge/munged.pid
MARIADBD_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

MUNGED_LOG=/var/log/munge/munged.log
MARIADBD_LOG=/var/log/mysql/error.log
SLURMDBD_LOG=/var/log/slurm/slurmdbd.log
SLURMCTLD_LOG=/var/log/slurm/slurmctld.log
SLURMD_LOG=/var/log/slurm/slurmd.log

say() { echo "slurm test cluster: $*"; }

die() {  # die MESSAGE [LOGFILE]: the message, the log's tail, exit status 1
    echo "slurm test cluster: ERROR: $1" >&2
    if [[ -n "${2:-}" && -f "$2" ]]; then
        echo "---- last lines of $2:" >&2
        tail -n 25 "$2" >&2
        echo "----" >&2
    fi
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run this as root (it installs packages and starts system daemons): sudo bash $0"
}

alive() {  # alive PID: the process exists and is not a zombie (without an init that reaps, one can linger)
    kill -0 "$1" 2>/dev/null && [[ "$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

running() {  # running PIDFILE: true if the pid file names a live process
    local pid
    [[ -f "$1" ]] && pid="$(tr -dc 0-9 <"$1")" && [[ -n "$pid" ]] && alive "$pid"
}

wait_for() {  # wait_for SECONDS WHAT LOGFILE COMMAND...: poll COMMAND each half second; die with the log's tail
    local seconds="$1" what="$2" log="$3" deadline
    shift 3
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within $seconds s (check: $*)" "$log"
        sleep 0.5
    done
}

stop_daemon() {  # stop_daemon NAME PIDFILE: SIGTERM, wait up to 30 s, then SIGKILL; a no-op if it is not running
    local name="$1" pidfile="$2" pid deadline
    if ! running "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(tr -dc 0-9 <"$pidfile")"
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) still runs after 30 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

sacct_works() { timeout 15 sacct -n -X -S now-1minutes >/dev/null 2>&1; }

start_slurmdbd() {
    running "$SLURMDBD_PID" && return 0
    say "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start" "$SLURMDBD_LOG"
    wait_for 60 "slurmdbd" "$SLURMDBD_LOG" sacct_works
}
