#!/usr/bin/env bash
# shmpipe's CLI against a plain pipe, as a shell user would run them:
#   lines: seq 1 N | cat | wc -l    vs  seq 1 N | shmpipe send shm://X  +  shmpipe recv shm://X | wc -l
#   bytes: head -c B /dev/zero | cat | wc -c
#          vs  head -c B /dev/zero | shmpipe send --chunk C shm://X  +  shmpipe recv --raw shm://X | wc -c
# Each shmpipe run uses a new ring; the receiver starts first (in the background) and the clock
# starts once its ring exists, so both sides of a pair time the same work: the producer's whole
# run to the last byte counted by wc. Prints each run's rates and ratio, then the medians.
#
# Usage: scripts/cli_vs_pipe.sh [lines|bytes|all]   (default all)
# Environment: SHMPIPE (the binary; default target/release/shmpipe), RUNS (3), LINES (10000000),
# BYTES (1G, as head -c takes it), CHUNK (64K), SEND_ARGS / RECV_ARGS (extra options for both modes).
set -euo pipefail

exe=${SHMPIPE:-target/release/shmpipe}
runs=${RUNS:-3}
lines=${LINES:-10000000}
bytes=${BYTES:-1G}
chunk=${CHUNK:-64K}
what=${1:-all}
[ -x "$exe" ] || { echo "no $exe: cargo build --release first, or set SHMPIPE" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# pipe_run PRODUCER COUNTER: seconds for PRODUCER | cat | COUNTER; checks the count.
pipe_run() {
    local t0 t1 got
    t0=$(now)
    got=$(bash -c "$1 | cat | $2")
    t1=$(now)
    [ "$got" = "$expected" ] || { echo "pipe counted $got, expected $expected" >&2; exit 1; }
    seconds "$t0" "$t1"
}

# shm_run PRODUCER COUNTER SEND_OPTS RECV_OPTS: seconds for PRODUCER | shmpipe send, with
# shmpipe recv | COUNTER started first; checks the count.
shm_run() {
    local name="cvp-$$-$RANDOM" t0 t1 got
    # shellcheck disable=SC2086
    bash -c "'$exe' recv $4 ${RECV_ARGS:-} shm://$name | $2 > '$tmp/count'" &
    local rx=$!
    until "$exe" ls | grep "^$name " > /dev/null; do sleep 0.01; done
    t0=$(now)
    # shellcheck disable=SC2086
    bash -c "$1 | '$exe' send $3 ${SEND_ARGS:-} shm://$name"
    wait "$rx"
    t1=$(now)
    got=$(cat "$tmp/count")
    [ "$got" = "$expected" ] || { echo "shmpipe counted $got, expected $expected" >&2; exit 1; }
    seconds "$t0" "$t1"
}

# compare UNIT AMOUNT PRODUCER COUNTER SEND_OPTS RECV_OPTS
compare() {
    local unit=$1 amount=$2 i p s
    : > "$tmp/pipe"; : > "$tmp/shm"; : > "$tmp/ratio"
    echo "# $unit: $3 | cat | $4   vs   $3 | shmpipe send $5 ${SEND_ARGS:-} shm://X  +  shmpipe recv $6 ${RECV_ARGS:-} shm://X | $4"
    for i in $(seq 1 "$runs"); do
        p=$(pipe_run "$3" "$4")
        s=$(shm_run "$3" "$4" "$5" "$6")
        echo "$p" >> "$tmp/pipe"; echo "$s" >> "$tmp/shm"
        awk -v p="$p" -v s="$s" 'BEGIN { printf "%.3f\n", p / s }' >> "$tmp/ratio"
        awk -v p="$p" -v s="$s" -v n="$amount" -v u="$unit" -v i="$i" 'BEGIN {
            printf "run %d: pipe %.3f s %7.1f M%s/s   shmpipe %.3f s %7.1f M%s/s   ratio %.2fx\n",
                i, p, n / p / 1e6, u, s, n / s / 1e6, u, p / s }'
    done
    awk -v p="$(median < "$tmp/pipe")" -v s="$(median < "$tmp/shm")" -v r="$(median < "$tmp/ratio")" \
        -v n="$amount" -v u="$unit" 'BEGIN {
        printf "median: pipe %.1f M%s/s, shmpipe %.1f M%s/s, ratio %.2fx (shmpipe rate / pipe rate, run by run)\n",
            n / p / 1e6, u, n / s / 1e6, u, r }'
}

if [ "$what" = lines ] || [ "$what" = all ]; then
    expected=$lines
    compare lines "$lines" "seq 1 $lines" "wc -l" "" ""
fi
if [ "$what" = bytes ] || [ "$what" = all ]; then
    expected=$(head -c "$bytes" /dev/zero | wc -c)
    compare B "$expected" "head -c $bytes /dev/zero" "wc -c" "--chunk $chunk" "--raw"
fi
