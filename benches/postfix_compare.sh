#!/usr/bin/env bash
# Postfix (Debian) and sluice side by side, same load, same sink, same cap on parallel
# deliveries, in one run, so the ratio is measured on the same machine at the same time.
#
#   bash benches/postfix_compare.sh            (as root: installs and configures postfix)
#   MESSAGES=50000 DOMAINS=100 PARALLEL=20 bash benches/postfix_compare.sh
#
# Everything runs on loopback: the sink (`sluice sink`) on 127.250.0.10:2525, Postfix's smtpd on
# 127.250.0.1:2500, sluice's submission listener on 127.250.0.2:2525. Both MTAs relay every
# domain straight to the sink (Postfix: default_transport to [ip]:port; sluice: relay_host), so
# neither spends time on DNS. Both keep their queue durable (Postfix fsyncs its queue files;
# sluice's spool commits with fsync). Prints one JSON line per MTA and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-50000}
DOMAINS=${DOMAINS:-100}
PARALLEL=${PARALLEL:-20}
SIZE=${SIZE:-5120}
SINK=127.250.0.10
WORK=$(mktemp -d /tmp/sluice-vs-postfix.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; postfix stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

if ! command -v postfix >/dev/null; then
  echo "installing postfix from Debian" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/sluice

count() { # messages the sink has seen so far (its last printed line)
  tail -n 1 "$WORK/sink.out" 2>/dev/null | awk '{print $2}'
}
wait_for() { # wait until the sink has counted $1 messages in total
  while :; do c=$(count); [ -n "$c" ] && [ "$c" -ge "$1" ] && break; sleep 0.2; done
}

"$BIN" sink --listen "$SINK:2525" --no-chunking > "$WORK/sink.out" 2>/dev/null &
sleep 1

# ---- Postfix -------------------------------------------------------------------------
pf=""
if [ -z "${SKIP_POSTFIX:-}" ]; then
postfix stop >/dev/null 2>&1 || true
[ -s /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf 2>/dev/null || touch /etc/postfix/main.cf
[ -f /etc/aliases ] || echo "postmaster: root" > /etc/aliases
newaliases 2>/dev/null || true
postconf -e "compatibility_level = 3.6" "alias_maps = hash:/etc/aliases" "alias_database = hash:/etc/aliases"
postconf -e "myhostname = bench.postfix.test" "mydestination =" "relay_domains =" \
  "mynetworks = 127.0.0.0/8" "inet_interfaces = loopback-only" "inet_protocols = ipv4" \
  "default_transport = smtp:[$SINK]:2525" "relay_transport = smtp:[$SINK]:2525" \
  "smtp_tls_security_level = none" "smtpd_tls_security_level = none" \
  "default_destination_concurrency_limit = $PARALLEL" "default_process_limit = 200" \
  "smtpd_recipient_restrictions = permit_mynetworks, reject" "maillog_file = /var/log/postfix-bench.log" \
  "disable_dns_lookups = yes" "smtp_host_lookup = native"
postconf -M "smtp/inet=127.250.0.1:2500 inet n - n - - smtpd"
postconf -M "smtp/unix=smtp unix - - n - $PARALLEL smtp"
if ! postfix start >/dev/null 2>&1 && ! postfix status >/dev/null 2>&1; then
  echo "postfix did not start (/var/log/postfix-bench.log; without syslog, \`postfix check\` exits 1 silently:"\
       "inet_interfaces must name addresses configured on an interface); SKIP_POSTFIX=1 runs sluice alone" >&2
  exit 1
fi
sleep 1
before=$(count); before=${before:-0}
cpu0=$(awk '{print $14+$15}' /proc/$(pgrep -o master)/stat 2>/dev/null || echo 0)
t0=$(date +%s.%N)
"$BIN" bench-inject --smtp 127.250.0.1:2500 --recipients "$MESSAGES" --domains "$DOMAINS" --batch 1 --concurrency 20 --size "$SIZE" > "$WORK/pf-inject.json"
wait_for $((before + MESSAGES))
t1=$(date +%s.%N)
pf=$(echo "$MESSAGES / ($t1 - $t0)" | bc -l)
postfix stop >/dev/null 2>&1 || true
printf '{"mta":"postfix","messages":%d,"seconds":%.2f,"messages_per_second":%.0f,"parallel":%d}\n' \
  "$MESSAGES" "$(echo "$t1 - $t0" | bc -l)" "$pf" "$PARALLEL"
fi

# ---- sluice --------------------------------------------------------------------------
mkdir -p "$WORK/sluice"
cat > "$WORK/sluice/sluice.toml" <<TOML
hostname = "bench.sluice.test"
[listen]
http = "127.250.0.2:8025"
smtp = "127.250.0.2:2525"
[spool]
path = "spool/sluice.redb"
max_queued = 100000000
[delivery]
port = 2525
relay_host = "$SINK"
max_connections = $PARALLEL
[verp]
domain = "fb.bench.test"
secret = "bench-secret-0123456789"
[events]
path = "events.jsonl"
TOML
"$BIN" run --config "$WORK/sluice/sluice.toml" 2>/dev/null &
sleep 1
before=$(count)
t0=$(date +%s.%N)
"$BIN" bench-inject --smtp 127.250.0.2:2525 --recipients "$MESSAGES" --domains "$DOMAINS" --batch 1 --concurrency 20 --size "$SIZE" > "$WORK/sl-inject.json"
wait_for $((before + MESSAGES))
t1=$(date +%s.%N)
sl=$(echo "$MESSAGES / ($t1 - $t0)" | bc -l)
printf '{"mta":"sluice","messages":%d,"seconds":%.2f,"messages_per_second":%.0f,"parallel":%d}\n' \
  "$MESSAGES" "$(echo "$t1 - $t0" | bc -l)" "$sl" "$PARALLEL"
[ -n "$pf" ] && printf '{"ratio_sluice_over_postfix":%.2f}\n' "$(echo "$sl / $pf" | bc -l)"
