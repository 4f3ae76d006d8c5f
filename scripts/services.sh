#!/usr/bin/env bash
# Start, stop or show the private MariaDB and Redis instances that Gatehouse
# uses for development (profile "dev"), for the test suite (profile "test") and
# for the load benchmarks (profile "bench").
#
# Usage: scripts/services.sh start|stop|status PROFILE
#
#   start   Install the Debian packages mariadb-server, mariadb-client,
#           redis-server and redis-tools (redis-cli) with apt-get when their
#           programs are missing, start MariaDB and Redis for PROFILE (or
#           reuse the running ones), create the database and user
#           "gatehouse", and write .state/PROFILE/gatehouse.env. For the
#           test profile, also unpack prometheus and promtool into
#           .state/tools/bin when they are not on PATH.
#   stop    Stop the gunicorn, Redis and MariaDB of PROFILE that their pid
#           files name. gunicorn goes first, and Redis and MariaDB are stopped
#           only after its master and every worker have exited.
#   status  Print which of them are running.
#
# Each profile keeps all of its state under .state/PROFILE/ in the repository:
#   mariadb/       my.cnf, data/, socket, pid file and error log of mariadbd
#   redis/         redis.conf, pid file, log, RDB and AOF files of redis-server
#   secrets/       generated passwords (mode 600), reused on later runs
#   keys/          token signing keys, written by `gatehouse keys generate`
#   prometheus/    prometheus_client multiprocess files
#   gatehouse.env  `export NAME=value` lines for the application and the tests
#   gunicorn.pid   pid file of a gunicorn started by `make run`
#
# Environment variables:
#   GATEHOUSE_DEV_MYSQL_PORT    MariaDB TCP port of the dev profile (default 3307)
#   GATEHOUSE_DEV_REDIS_PORT    Redis TCP port of the dev profile (default 6380)
#   GATEHOUSE_TEST_MYSQL_PORT   MariaDB TCP port of the test profile (default 3308)
#   GATEHOUSE_TEST_REDIS_PORT   Redis TCP port of the test profile (default 6381)
#   GATEHOUSE_BENCH_MYSQL_PORT  MariaDB TCP port of the bench profile (default 3318)
#   GATEHOUSE_BENCH_REDIS_PORT  Redis TCP port of the bench profile (default 6393)
#   GATEHOUSE_SERVICES_TIMEOUT  seconds to wait for a server to start or stop
#                               before giving up (default 30). gunicorn gets
#                               at least its GATEHOUSE_SHUTDOWN_DRAIN_SECONDS
#                               plus GATEHOUSE_GRACEFUL_TIMEOUT plus 10 s.
#
# Every server listens on 127.0.0.1 only.

set -euo pipefail
# A failing command inside $(...) fails the substitution too.
shopt -s inherit_errexit

# Debian installs mariadbd in /usr/sbin, which is often missing from the PATH
# of a user other than root.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

script_name=scripts/services.sh

usage() {
    echo "usage: $script_name start|stop|status dev|test|bench" >&2
    exit 2
}

die() {
    echo "$script_name: error: $*" >&2
    exit 1
}

info() {
    echo "$script_name: $*"
}

# ---------------------------------------------------------------------------
# Arguments and settings

[[ $# -eq 2 ]] || usage
action=$1
profile=$2

case $action in
    start | stop | status) ;;
    *) usage ;;
esac

case $profile in
    dev)
        mysql_port=${GATEHOUSE_DEV_MYSQL_PORT:-3307}
        redis_port=${GATEHOUSE_DEV_REDIS_PORT:-6380}
        ;;
    test)
        mysql_port=${GATEHOUSE_TEST_MYSQL_PORT:-3308}
        redis_port=${GATEHOUSE_TEST_REDIS_PORT:-6381}
        ;;
    bench)
        mysql_port=${GATEHOUSE_BENCH_MYSQL_PORT:-3318}
        redis_port=${GATEHOUSE_BENCH_REDIS_PORT:-6393}
        ;;
    *) usage ;;
esac

profile_upper=${profile^^}
timeout_seconds=${GATEHOUSE_SERVICES_TIMEOUT:-30}
# Seconds a gunicorn stop may take beyond its drain delay and graceful timeout. In
# that time the master kills the workers left at the end of the graceful timeout,
# reaps them and logs its exit, and workers close their pools. An estimate with room.
gunicorn_stop_margin_seconds=10

validate_port() {
    local name=$1 value=$2

    if ! [[ $value =~ ^[0-9]{1,5}$ ]] || ((10#$value < 1 || 10#$value > 65535)); then
        die "invalid $name='$value': expected a TCP port number from 1 to 65535"
    fi
}

validate_port "GATEHOUSE_${profile_upper}_MYSQL_PORT" "$mysql_port"
validate_port "GATEHOUSE_${profile_upper}_REDIS_PORT" "$redis_port"
if ((10#$mysql_port == 10#$redis_port)); then
    die "GATEHOUSE_${profile_upper}_MYSQL_PORT and GATEHOUSE_${profile_upper}_REDIS_PORT are both $mysql_port: give MariaDB and Redis different ports"
fi
mysql_port=$((10#$mysql_port))
redis_port=$((10#$redis_port))

if ! [[ $timeout_seconds =~ ^[0-9]{1,4}$ ]] || ((10#$timeout_seconds < 1)); then
    die "invalid GATEHOUSE_SERVICES_TIMEOUT='$timeout_seconds': expected a whole number of seconds from 1 to 9999"
fi
timeout_seconds=$((10#$timeout_seconds))

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
state_dir=$repo_root/.state/$profile

mariadb_dir=$state_dir/mariadb
mariadb_cnf=$mariadb_dir/my.cnf
mariadb_data_dir=$mariadb_dir/data
mariadb_pid_file=$mariadb_dir/mariadbd.pid
mariadb_log=$mariadb_dir/error.log
mariadb_socket=$mariadb_dir/mariadbd.sock

# A Unix socket path is limited to 107 bytes on Linux (sun_path has room for
# 108 including the final NUL), so a checkout at a deep path gets its socket in a
# private directory under /tmp, named after a hash of the state directory.
if ((${#mariadb_socket} > 107)); then
    socket_hash=$(printf '%s' "$state_dir" | sha256sum | cut -c1-16)
    mariadb_socket=/tmp/gatehouse-$socket_hash/mariadbd.sock
fi

redis_dir=$state_dir/redis
redis_conf=$redis_dir/redis.conf
redis_pid_file=$redis_dir/redis-server.pid
redis_log=$redis_dir/redis-server.log

secrets_dir=$state_dir/secrets
keys_dir=$state_dir/keys
prometheus_dir=$state_dir/prometheus
# Shared by all profiles: programs the test suite needs (unpack_test_tools_if_missing).
tools_dir=$repo_root/.state/tools/bin
env_file=$state_dir/gatehouse.env
gunicorn_pid_file=$state_dir/gunicorn.pid

# ---------------------------------------------------------------------------
# Processes and pid files

# Print the current time in microseconds. SECONDS would do, but it ticks in
# whole seconds, so a wait of N seconds could end after N-1.
now_microseconds() {
    echo "${EPOCHREALTIME//[!0-9]/}"
}

# Print the time in microseconds at which a wait of SECONDS ends.
deadline_after() {
    echo $(($(now_microseconds) + $1 * 1000000))
}

# Succeed while the time is before DEADLINE, as printed by deadline_after.
before_deadline() {
    (($(now_microseconds) < $1))
}

# Succeed when process PID exists and has not exited. `kill -0` still succeeds
# on a zombie until its parent reaps it, so a zombie counts as exited.
is_running() {
    local pid=$1 stat process_state

    kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # The state letter follows the command name, which is in parentheses and
    # may itself contain spaces or parentheses.
    process_state=${stat##*) }
    [[ ${process_state:0:1} != Z ]]
}

# Print the pid in PID_FILE when it names a running process whose command
# line contains PATTERN; fail otherwise.
live_pid() {
    local pid_file=$1 pattern=$2 pid command_line

    [[ -f $pid_file ]] || return 1
    pid=$(tr -d '[:space:]' <"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    is_running "$pid" || return 1
    command_line=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $command_line == *"$pattern"* ]] || return 1
    echo "$pid"
}

# Remove PID_FILE unless it names a running process whose command line
# contains PATTERN.
remove_stale_pid_file() {
    local pid_file=$1 pattern=$2

    if [[ -f $pid_file ]] && ! live_pid "$pid_file" "$pattern" >/dev/null; then
        info "removing stale pid file $pid_file"
        rm -f "$pid_file"
    fi
}

# Print the pids of the running processes in the arguments, separated by spaces.
running_pids() {
    local pid running=()

    for pid in "$@"; do
        if is_running "$pid"; then
            running+=("$pid")
        fi
    done
    echo "${running[*]}"
}

# Print the pids of the children of process PARENT, one per line, read from
# the parent pid field of each /proc/PID/stat.
child_pids() {
    local parent=$1 stat_file stat fields

    for stat_file in /proc/[0-9]*/stat; do
        # A process may exit between the glob and the read.
        { stat=$(<"$stat_file"); } 2>/dev/null || continue
        # The command name in parentheses may contain spaces, so the fields
        # are counted from the state letter that follows it.
        read -r -a fields <<<"${stat##*) }"
        if [[ ${fields[1]} == "$parent" ]]; then
            stat_file=${stat_file%/stat}
            echo "${stat_file#/proc/}"
        fi
    done
}

# Print the value of the variable NAME in the environment that process PID
# started with. Fail when it is not set there or the environment is not readable.
process_environment_value() {
    local pid=$1 name=$2 entry

    [[ -r /proc/$pid/environ ]] || return 1
    while IFS= read -r -d '' entry; do
        if [[ $entry == "$name="* ]]; then
            echo "${entry#*=}"
            return 0
        fi
    done <"/proc/$pid/environ"
    return 1
}

# Print a number of seconds such as 30 or 2.5 rounded up to whole seconds.
# Fail when VALUE is not such a number.
round_up_seconds() {
    local value=$1 whole

    [[ $value =~ ^([0-9]{1,4})(\.([0-9]+))?$ ]] || return 1
    whole=$((10#${BASH_REMATCH[1]}))
    if [[ ${BASH_REMATCH[3]} =~ [1-9] ]]; then
        whole=$((whole + 1))
    fi
    echo "$whole"
}

# Print the whole seconds of the gunicorn setting NAME: the value in the
# environment of the gunicorn master PID, which is the one gunicorn read,
# else the value in this environment, else DEFAULT (service/config.py's).
gunicorn_setting_seconds() {
    local pid=$1 name=$2 default=$3 value

    value=$(process_environment_value "$pid" "$name") || value=${!name:-$default}
    if ! round_up_seconds "$value"; then
        echo "$script_name: ignoring $name='$value' of gunicorn (pid $pid), which is not a number of seconds; assuming $default" >&2
        echo "$default"
    fi
}

# Print the seconds to wait for the gunicorn master PID to stop: its drain
# delay, then its graceful timeout, then a margin, and at least
# GATEHOUSE_SERVICES_TIMEOUT.
gunicorn_stop_seconds() {
    local pid=$1 drain graceful seconds

    drain=$(gunicorn_setting_seconds "$pid" GATEHOUSE_SHUTDOWN_DRAIN_SECONDS 0)
    graceful=$(gunicorn_setting_seconds "$pid" GATEHOUSE_GRACEFUL_TIMEOUT 30)
    seconds=$((drain + graceful + gunicorn_stop_margin_seconds))
    echo $((seconds > timeout_seconds ? seconds : timeout_seconds))
}

# Send SIGTERM to the process that PID_FILE names and wait up to SECONDS
# until it has exited, then send SIGKILL if it is still running. With
# "children" as the fifth argument, wait for the children that the process
# had when it got SIGTERM as well, and kill those that are left too: the
# gunicorn master can exit before its workers do.
stop_process() {
    local name=$1 pid_file=$2 pattern=$3 seconds=$4 with_children=${5:-} pid deadline
    local -a pids left

    if ! pid=$(live_pid "$pid_file" "$pattern"); then
        remove_stale_pid_file "$pid_file" "$pattern"
        info "$name is not running"
        return 0
    fi

    pids=("$pid")
    if [[ $with_children == children ]]; then
        mapfile -t -O 1 pids < <(child_pids "$pid")
    fi

    info "stopping $name (pids ${pids[*]}), waiting up to ${seconds}s"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(deadline_after "$seconds")
    while [[ -n $(running_pids "${pids[@]}") ]] && before_deadline "$deadline"; do
        sleep 0.1
    done

    read -r -a left <<<"$(running_pids "${pids[@]}")"
    if ((${#left[@]} > 0)); then
        info "$name (pids ${left[*]}) did not stop within ${seconds}s after SIGTERM; sending SIGKILL"
        kill -KILL "${left[@]}" 2>/dev/null || true
        deadline=$(deadline_after 5)
        while [[ -n $(running_pids "${left[@]}") ]] && before_deadline "$deadline"; do
            sleep 0.1
        done
        read -r -a left <<<"$(running_pids "${left[@]}")"
        if ((${#left[@]} > 0)); then
            local pid_list="${left[*]}"
            die "$name (pids $pid_list) is still running 5s after SIGKILL: check its state with 'ps -o pid,stat,args -p ${pid_list// /,}'"
        fi
    fi

    # A server that exits normally removes its own pid file first. One that
    # was killed leaves it behind.
    rm -f "$pid_file"
    info "$name stopped"
}

# Print the last lines of LOG_FILE to stderr and exit with MESSAGE.
fail_with_log() {
    local message=$1 log_file=$2

    if [[ -s $log_file ]]; then
        echo "$script_name: last lines of $log_file:" >&2
        tail -n 20 "$log_file" | sed 's/^/    /' >&2
    fi
    die "$message"
}

# Exit unless CONFIG_FILE, which the running server NAME was started with,
# has the content CONFIG that this run would write. A running server is
# reused only when its port, paths, settings and password are the requested
# ones.
require_unchanged_config() {
    local name=$1 config_file=$2 config=$3

    if [[ ! -f $config_file || $(<"$config_file") != "$config" ]]; then
        die "$name is running with a configuration other than the requested one in $config_file (a changed port, password or setting): run '$script_name stop $profile', then start again"
    fi
}

# ---------------------------------------------------------------------------
# Packages and secrets

# Set the caller's array "privileged" to the prefix that runs a command as root:
# nothing for root, else sudo. WHAT names the task in the error when sudo is missing.
set_privileged() {
    local what=$1
    privileged=()
    if ((EUID == 0)); then
        return 0
    fi
    command -v sudo >/dev/null ||
        die "$what needs root, and sudo is not installed: do it as root, then run this again"
    privileged=(sudo)
}

install_packages_if_missing() {
    local program missing=()
    local -a packages=(mariadb-server mariadb-client redis-server redis-tools)

    for program in mariadbd mariadb-install-db mariadb mariadb-admin redis-server redis-cli; do
        command -v "$program" >/dev/null || missing+=("$program")
    done
    ((${#missing[@]} == 0)) && return 0

    info "missing programs: ${missing[*]}; installing Debian packages ${packages[*]}"
    local -a privileged
    set_privileged "installing ${packages[*]}"
    "${privileged[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${privileged[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${packages[@]}"

    for program in "${missing[@]}"; do
        command -v "$program" >/dev/null ||
            die "$program is still missing after installing ${packages[*]}"
    done
}

# The test suite checks the alert rules with promtool and scrapes a running service with
# a real Prometheus. Installing Debian's prometheus package would also enable and start
# its system service on a systemd host, listening on port 9090 of every interface, so
# the two programs are unpacked from the package into $tools_dir instead. Programs
# already on PATH are used as they are.
unpack_test_tools_if_missing() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        return 0
    fi
    if [[ -x $tools_dir/prometheus && -x $tools_dir/promtool ]]; then
        return 0
    fi

    local work
    work=$(mktemp -d)
    info "unpacking prometheus and promtool from Debian's prometheus package into $tools_dir"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        local -a privileged
        set_privileged "updating the package lists"
        "${privileged[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        (cd "$work" && apt-get download prometheus) || {
            rm -rf "$work"
            die "apt-get download prometheus failed: check the apt sources, then run this again"
        }
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    mkdir -p "$tools_dir"
    install -m 755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$tools_dir/"
    rm -rf "$work"
}

generate_password() {
    if command -v openssl >/dev/null; then
        openssl rand -hex 24
    else
        python3 -c 'import secrets; print(secrets.token_hex(24))'
    fi
}

# Print the password stored in secrets/NAME, generating it on first use.
read_or_create_secret() {
    local secret_file=$secrets_dir/$1 value

    if [[ ! -s $secret_file ]]; then
        generate_password >"$secret_file.tmp"
        chmod 600 "$secret_file.tmp"
        mv -f "$secret_file.tmp" "$secret_file"
    fi
    chmod 600 "$secret_file"

    value=$(tr -d '[:space:]' <"$secret_file")
    # The password goes into SQL string literals and into the Redis URL
    # unescaped, so only letters and digits are accepted.
    if ! [[ $value =~ ^[A-Za-z0-9]{16,}$ ]]; then
        die "invalid password in $secret_file: expected at least 16 letters or digits; delete the file to generate a new password"
    fi
    echo "$value"
}

# ---------------------------------------------------------------------------
# MariaDB

# Print the value of the first "port" line in CONFIG_FILE, or nothing.
configured_port() {
    local config_file=$1

    [[ -f $config_file ]] || return 0
    sed -n -E 's/^port[[:space:]]*[= ][[:space:]]*([0-9]+).*/\1/p' "$config_file" | head -n 1
}

# Print the my.cnf of this profile.
render_mariadb_cnf() {
    local server_user=""

    # mariadbd exits at start-up when run as root unless its configuration
    # sets user=root.
    if ((EUID == 0)); then
        server_user="user=root"
    fi

    cat <<EOF
# Written by $script_name on every start of the $profile profile: edits are lost.
# Pass this file first to every server and client command, as
# --defaults-file=$mariadb_cnf, so that none of them reads /etc/mysql.

[mysqld]
$server_user
datadir=$mariadb_data_dir
socket=$mariadb_socket
pid-file=$mariadb_pid_file
log-error=$mariadb_log
port=$mysql_port
bind-address=127.0.0.1
skip-name-resolve
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
# The MariaDB 10.11 defaults are 128M and 96M, more than a development or test database needs.
innodb_buffer_pool_size=32M
innodb_log_file_size=16M

[client]
socket=$mariadb_socket
port=$mysql_port
user=root
EOF
}

mariadb_is_ready() {
    mariadb-admin --defaults-file="$mariadb_cnf" ping >/dev/null 2>&1
}

# Wait until `mariadb-admin ping` reaches the MariaDB server with pid PID.
wait_for_mariadb() {
    local pid=$1 deadline
    deadline=$(deadline_after "$timeout_seconds")

    until mariadb_is_ready; do
        if ! is_running "$pid"; then
            fail_with_log "MariaDB ($profile) exited during start-up; see $mariadb_log" "$mariadb_log"
        fi
        if ! before_deadline "$deadline"; then
            fail_with_log "MariaDB ($profile, pid $pid) did not answer a ping within ${timeout_seconds}s; see $mariadb_log" "$mariadb_log"
        fi
        sleep 0.1
    done
}

start_mariadb() {
    local pid config

    config=$(render_mariadb_cnf)
    if pid=$(live_pid "$mariadb_pid_file" "$mariadb_cnf"); then
        require_unchanged_config "MariaDB ($profile)" "$mariadb_cnf" "$config"
        info "MariaDB ($profile) is already running (pid $pid, port $mysql_port)"
        wait_for_mariadb "$pid"
        return 0
    fi
    remove_stale_pid_file "$mariadb_pid_file" "$mariadb_cnf"

    mkdir -p "$mariadb_data_dir" "$(dirname "$mariadb_socket")"
    echo "$config" >"$mariadb_cnf"

    # The mysql/ directory contains the system tables, so a data directory
    # without it is empty or was left half-initialized.
    if [[ ! -d $mariadb_data_dir/mysql ]]; then
        info "initializing the MariaDB data directory $mariadb_data_dir"
        if ! mariadb-install-db --defaults-file="$mariadb_cnf" \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$mariadb_dir/install-db.log" 2>&1; then
            fail_with_log "mariadb-install-db failed; delete $mariadb_data_dir and run '$script_name start $profile' again" \
                "$mariadb_dir/install-db.log"
        fi
    fi

    # setsid puts the server in its own session, so a Ctrl-C in the terminal
    # that ran `make run` does not reach it. Its standard streams must not
    # hold open a pipe of the caller, such as `make test | tee log`.
    setsid mariadbd --defaults-file="$mariadb_cnf" </dev/null >>"$mariadb_log" 2>&1 &
    pid=$!
    wait_for_mariadb "$pid"
    info "MariaDB ($profile) started (pid $pid, 127.0.0.1:$mysql_port, socket $mariadb_socket)"
}

# Drop the root accounts that mariadb-install-db creates besides
# root@localhost (root@127.0.0.1, root@::1, root@HOSTNAME). They have no
# password and would accept any local user over TCP. root@localhost stays:
# with skip-name-resolve it matches only connections through the socket,
# whose directory is readable by the owner only.
drop_remote_root_accounts() {
    local host

    mariadb --defaults-file="$mariadb_cnf" --batch --skip-column-names \
        --execute "SELECT host FROM mysql.user WHERE user = 'root' AND host <> 'localhost'" |
        while read -r host; do
            [[ $host =~ ^[A-Za-z0-9._:%-]+$ ]] || die "invalid host name '$host' in a MariaDB root account: expected letters, digits and ._:%-"
            mariadb --defaults-file="$mariadb_cnf" --execute "DROP USER 'root'@'$host'"
        done
}

# Create the database and the application user, and set the user's password
# to the one in secrets/, so that a changed or deleted secret file takes effect.
create_database_and_user() {
    local password=$1

    drop_remote_root_accounts

    # The SQL goes through standard input so that the password never appears
    # in a process list.
    mariadb --defaults-file="$mariadb_cnf" --batch <<EOF
CREATE DATABASE IF NOT EXISTS gatehouse CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER DATABASE gatehouse CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'gatehouse'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'gatehouse'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON gatehouse.* TO 'gatehouse'@'127.0.0.1';
EOF
}

# ---------------------------------------------------------------------------
# Redis

# Print the redis.conf of this profile. A configuration file rather than
# command-line options keeps requirepass out of the process list.
render_redis_conf() {
    local password=$1

    cat <<EOF
# Written by $script_name on every start of the $profile profile: edits are lost.
# Contains the password: keep the mode at 600.
bind 127.0.0.1
port $redis_port
daemonize no
dir "$redis_dir"
pidfile "$redis_pid_file"
logfile "$redis_log"
save 60 1
appendonly yes
repl-diskless-sync-delay 0
requirepass $password
EOF
}

redis_is_ready() {
    local password=$1 reply

    reply=$(REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null) || return 1
    [[ $reply == PONG ]]
}

# Wait until the Redis server with pid PID replies PONG on its port.
wait_for_redis() {
    local pid=$1 password=$2 deadline
    deadline=$(deadline_after "$timeout_seconds")

    until redis_is_ready "$password"; do
        if ! is_running "$pid"; then
            fail_with_log "Redis ($profile) exited during start-up; see $redis_log" "$redis_log"
        fi
        if ! before_deadline "$deadline"; then
            fail_with_log "Redis ($profile, pid $pid) did not answer PING on 127.0.0.1:$redis_port within ${timeout_seconds}s; see $redis_log" "$redis_log"
        fi
        sleep 0.1
    done
}

start_redis() {
    local password=$1 pid config

    config=$(render_redis_conf "$password")
    if pid=$(live_pid "$redis_pid_file" redis-server); then
        require_unchanged_config "Redis ($profile)" "$redis_conf" "$config"
        info "Redis ($profile) is already running (pid $pid, port $redis_port)"
        wait_for_redis "$pid" "$password"
        return 0
    fi
    remove_stale_pid_file "$redis_pid_file" redis-server

    mkdir -p "$redis_dir"
    echo "$config" >"$redis_conf"
    chmod 600 "$redis_conf"

    # Started in the background here rather than with "daemonize yes", so
    # that a server that exits during start-up is noticed at once.
    setsid redis-server "$redis_conf" </dev/null >>"$redis_log" 2>&1 &
    pid=$!
    wait_for_redis "$pid" "$password"
    info "Redis ($profile) started (pid $pid, 127.0.0.1:$redis_port)"
}

# ---------------------------------------------------------------------------
# Environment file

write_env_file() {
    local mysql_password=$1 redis_password=$2

    {
        echo "# Written by $script_name start $profile: edits are lost. Contains passwords."
        printf 'export %s=%q\n' \
            GATEHOUSE_MYSQL_HOST 127.0.0.1 \
            GATEHOUSE_MYSQL_PORT "$mysql_port" \
            GATEHOUSE_MYSQL_USER gatehouse \
            GATEHOUSE_MYSQL_PASSWORD "$mysql_password" \
            GATEHOUSE_MYSQL_DATABASE gatehouse \
            GATEHOUSE_REDIS_URL "redis://:$redis_password@127.0.0.1:$redis_port/0" \
            GATEHOUSE_KEYS_DIR "$keys_dir" \
            GATEHOUSE_STATE_DIR "$state_dir" \
            PROMETHEUS_MULTIPROC_DIR "$prometheus_dir" \
            GATEHOUSE_MYSQL_ADMIN_DEFAULTS "$mariadb_cnf" \
            GATEHOUSE_MYSQL_ROOT_SOCKET "$mariadb_socket"
    } >"$env_file.tmp"
    chmod 600 "$env_file.tmp"
    mv -f "$env_file.tmp" "$env_file"
}

# ---------------------------------------------------------------------------
# Actions

start() {
    local mysql_password redis_password

    install_packages_if_missing
    if [[ $profile == test ]]; then
        unpack_test_tools_if_missing
    fi

    # Everything under .state contains passwords, keys or data, so only the
    # owner may read it. mariadbd and redis-server run as this user, or as root.
    umask 077
    mkdir -p "$state_dir" "$secrets_dir" "$keys_dir" "$prometheus_dir"
    chmod 700 "$state_dir" "$secrets_dir" "$keys_dir"

    mysql_password=$(read_or_create_secret mysql-password)
    redis_password=$(read_or_create_secret redis-password)

    start_mariadb
    create_database_and_user "$mysql_password"
    start_redis "$redis_password"
    write_env_file "$mysql_password" "$redis_password"
    info "environment for the $profile profile written to $env_file"
}

stop() {
    local pid gunicorn_seconds=$timeout_seconds

    # gunicorn and all of its workers first, because they are clients of the two
    # servers. Requests in flight then finish with MariaDB and Redis still up.
    if pid=$(live_pid "$gunicorn_pid_file" gunicorn); then
        gunicorn_seconds=$(gunicorn_stop_seconds "$pid")
    fi
    stop_process "gunicorn ($profile)" "$gunicorn_pid_file" gunicorn "$gunicorn_seconds" children
    stop_process "Redis ($profile)" "$redis_pid_file" redis-server "$timeout_seconds"
    stop_process "MariaDB ($profile)" "$mariadb_pid_file" "$mariadb_cnf" "$timeout_seconds"
}

# Print one line about the process that PID_FILE names.
print_status() {
    local name=$1 pid_file=$2 pattern=$3 details=$4 pid

    if pid=$(live_pid "$pid_file" "$pattern"); then
        echo "$name: running (pid $pid${details:+, $details})"
    elif [[ -f $pid_file ]]; then
        echo "$name: not running (stale pid file $pid_file)"
    else
        echo "$name: not running"
    fi
}

status() {
    print_status "MariaDB ($profile)" "$mariadb_pid_file" "$mariadb_cnf" \
        "127.0.0.1:$(configured_port "$mariadb_cnf"), socket $mariadb_socket"
    print_status "Redis ($profile)" "$redis_pid_file" redis-server \
        "127.0.0.1:$(configured_port "$redis_conf")"
    print_status "gunicorn ($profile)" "$gunicorn_pid_file" gunicorn ""
    if [[ -f $env_file ]]; then
        echo "environment file: $env_file"
    fi
}

"$action"
