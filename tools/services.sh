#!/usr/bin/env bash
# Real services for the cluster tests (tests/test_cluster.py) and for trying the cluster setup on one
# machine: PostgreSQL (role and databases for lhcad), munge and a single-node SLURM cluster on this
# host (slurmctld + slurmd). Debian/Ubuntu, as root; idempotent (a second `up` only checks).
#
#   tools/services.sh up       install what is missing (apt-get), start everything, verify
#                              (psql, sinfo, srun hostname); prints the settings the tests use
#   tools/services.sh down     stop the daemons `up` started (PostgreSQL, slurmd, slurmctld, munged)
#   tools/services.sh status   one line per service; exit status 0 only if all are up
#
# Settings (environment; the defaults are what tests/test_cluster.py expects):
#   LHCAD_PG_HOST=127.0.0.1 LHCAD_PG_PORT=5432 LHCAD_PG_USER=lhcad LHCAD_PG_PASSWORD=lhcad
#   databases lhcad_mlflow (MLflow backend) and lhcad_optuna (Optuna studies), owned by the role,
#   which may also create databases (each test gets fresh ones).
# The MLflow server is not started here: `make server` starts one, and the tests start their own.
# Nothing here is needed by `make test` / `make run`: without these services the cluster tests skip.
set -euo pipefail

PG_HOST=${LHCAD_PG_HOST:-127.0.0.1}
PG_PORT=${LHCAD_PG_PORT:-5432}
PG_USER=${LHCAD_PG_USER:-lhcad}
PG_PASSWORD=${LHCAD_PG_PASSWORD:-lhcad}
PG_DATABASES=(lhcad_mlflow lhcad_optuna)
SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# written by lhcad tools/services.sh"
LOG_DIR=/var/log/lhcad-services

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons); you are $(id -un)"
}

# ------------------------------------------------------------------------------------------ install

install_packages() {
    local missing=()
    command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld slurm-client)
    command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" >"$LOG_DIR/apt.log" 2>&1 || {
            apt-get update -q >>"$LOG_DIR/apt.log" 2>&1
            apt-get install -y -q "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 ||
                die "apt-get install ${missing[*]} failed; see $LOG_DIR/apt.log"
        }
    fi
}

# ------------------------------------------------------------------------------------------ PostgreSQL

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -1; }

psql_admin() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAX -p "$PG_PORT" "$@"; }

start_postgres() {
    local ver
    ver=$(pg_version)
    if [[ -z $ver ]]; then
        ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
        pg_createcluster "$ver" main >/dev/null
    fi
    local conf=/etc/postgresql/$ver/main/postgresql.conf
    # 16 concurrent writers (benchmarks) x SQLAlchemy pools + an MLflow server need more than 100
    if ! grep -q "^max_connections = 300" "$conf"; then
        sed -i 's/^#\?max_connections = .*/max_connections = 300\t\t\t# lhcad tools\/services.sh/' "$conf"
        pg_ctlcluster "$ver" main stop >/dev/null 2>&1 || true
    fi
    if ! pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
        say "starting PostgreSQL $ver"
        pg_ctlcluster "$ver" main start
    fi
    for _ in $(seq 30); do
        psql_admin -c "select 1" >/dev/null 2>&1 && break
        sleep 1
    done
    psql_admin -c "select 1" >/dev/null || die "PostgreSQL $ver did not come up; see /var/log/postgresql/"
    if [[ $(psql_admin -c "select 1 from pg_roles where rolname = '$PG_USER'") != 1 ]]; then
        psql_admin -c "create role $PG_USER login createdb password '$PG_PASSWORD'"
    fi
    local db
    for db in "${PG_DATABASES[@]}"; do
        if [[ $(psql_admin -c "select 1 from pg_database where datname = '$db'") != 1 ]]; then
            psql_admin -c "create database $db owner $PG_USER"
        fi
    done
    PGPASSWORD=$PG_PASSWORD psql -qtAX -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "${PG_DATABASES[0]}" \
        -c "select 1" >/dev/null || die "cannot log in to PostgreSQL as $PG_USER at $PG_HOST:$PG_PORT"
}

stop_postgres() {
    local ver
    ver=$(pg_version)
    [[ -n $ver ]] && pg_ctlcluster "$ver" main stop >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------------------------------ munge + SLURM

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "starting munged"
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    munge -n </dev/null | unmunge >/dev/null || die "munge does not work; see /var/log/munge/munged.log"
}

write_slurm_conf() {
    if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
        say "$SLURM_CONF exists and was not written here: using it as it is"
        return
    fi
    local host node
    host=$(hostname -s)
    # this host's CPUs, sockets, cores, threads and memory as slurmd sees them (minus 512 MB headroom)
    node=$(slurmd -C | head -1 | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^RealMemory=/) {
        split($i, a, "="); $i = "RealMemory=" (a[2] > 1024 ? a[2] - 512 : a[2]) } print }')
    node="${node%% *} NodeAddr=127.0.0.1 ${node#* }"   # no DNS needed for this host's name
    install -d -m 0755 /etc/slurm
    cat >"$SLURM_CONF.tmp" <<EOF
$MARKER: a single-node cluster on this host
ClusterName=lhcad
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
$node State=UNKNOWN
PartitionName=lhcad Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $SLURM_CONF ]] && cmp -s "$SLURM_CONF.tmp" "$SLURM_CONF"; then
        rm -f "$SLURM_CONF.tmp"
        return
    fi
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
    stop_slurm   # daemons of an older configuration: restarted by start_slurm
    # submitit reads job states with sacct, which needs slurmdbd; lhcad's launcher does not (squeue +
    # result files), and a missing cgroup.conf only produces warnings
}

start_slurm() {
    write_slurm_conf
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld
    install -d -m 0755 /var/spool/slurmd "$LOG_DIR"
    chown slurm:slurm "$LOG_DIR"
    if ! pgrep -x slurmctld >/dev/null; then
        say "starting slurmctld"
        slurmctld
    fi
    if ! pgrep -x slurmd >/dev/null; then
        say "starting slurmd"
        slurmd
    fi
    local host
    host=$(hostname -s)
    for _ in $(seq 60); do
        sinfo -h -n "$host" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
        sleep 1
    done
    local state
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    if [[ $state =~ ^(down|drain|drained|invalid) ]]; then
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        sleep 2
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    fi
    [[ $state =~ ^(idle|mixed|allocated) ]] ||
        die "SLURM node $host is '${state:-not reported}'; see $LOG_DIR/slurmctld.log and slurmd.log"
    local out
    out=$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1) || die "srun hostname failed: $out"
    [[ $out == "$host"* ]] || die "srun hostname printed '$out', expected $host"
}

stop_slurm() {
    local name pid
    for name in slurmd slurmctld; do
        [[ -f /run/$name.pid ]] || continue
        pid=$(cat "/run/$name.pid")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    done
}

stop_munge() {
    if [[ -f /run/munge/munged.pid ]]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
}

# ------------------------------------------------------------------------------------------ status

status() {
    local ok=0
    if PGPASSWORD=$PG_PASSWORD psql -qtAX -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "${PG_DATABASES[0]}" \
        -c "select 1" >/dev/null 2>&1; then
        say "postgresql: up at $PG_HOST:$PG_PORT (role $PG_USER, databases ${PG_DATABASES[*]})"
    else
        say "postgresql: not reachable at $PG_HOST:$PG_PORT as $PG_USER"; ok=1
    fi
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then say "munge: up"; else say "munge: down"; ok=1; fi
    local state
    state=$(sinfo -h -o "%P %D %T" 2>/dev/null | head -3 | tr '\n' ';' || true)
    if [[ $state =~ (idle|mixed|allocated) ]]; then say "slurm: $state"; else say "slurm: down ${state}"; ok=1; fi
    return $ok
}

case ${1:-} in
up)
    need_root
    install -d -m 0755 "$LOG_DIR"
    t0=$SECONDS
    install_packages
    start_postgres
    start_munge
    start_slurm
    status
    say "up in $((SECONDS - t0)) s; tests use LHCAD_PG_URI=postgresql://$PG_USER:***@$PG_HOST:$PG_PORT"
    ;;
down)
    need_root
    stop_slurm
    stop_munge
    stop_postgres
    say "stopped"
    ;;
status)
    status
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
