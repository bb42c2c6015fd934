#!/bin/sh
# Install the Debian packages the test suite runs for real, when any is missing:
# PostgreSQL and PgBouncer (the servers), faketime (skewed clocks), iptables, iproute2 and
# util-linux (partitions in a private network namespace), chromium and chromium-driver
# (the consent driven in a real browser, through Selenium). As root through apt-get;
# otherwise stop and print the command to run. With arguments, only those packages
# (`make demo` needs only postgresql).
set -eu
wanted=${*:-postgresql pgbouncer faketime iptables iproute2 util-linux chromium chromium-driver}

missing=""
need() {  # need PACKAGE TEST...: PACKAGE is missing unless the test succeeds
    package=$1
    shift
    case " $wanted " in *" $package "*) ;; *) return 0 ;; esac
    if ! "$@" >/dev/null 2>&1; then
        missing="$missing $package"
    fi
}
need postgresql sh -c 'ls /usr/lib/postgresql/*/bin/postgres'
need pgbouncer sh -c '[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer'
need faketime command -v faketime
need iptables sh -c 'command -v iptables || [ -x /usr/sbin/iptables ]'
need iproute2 sh -c 'command -v ip || [ -x /usr/sbin/ip ]'
need util-linux command -v unshare
need chromium test -x /usr/bin/chromium
need chromium-driver test -x /usr/bin/chromedriver

[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "the test suite needs these Debian packages:$missing" >&2
    echo "install them with:  sudo apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
echo "installing:$missing"
apt-get update -q
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
