#!/usr/bin/env bash
# Runs every command of README.md's ```sh blocks, as written, in a fresh temporary folder (issue 13, item 8):
# the App/Comms setup, the servers started with `&` (and stopped at the end), the tenant, the Connector's setup
# against the sample ERP, a sync, the downstream commands. Fails on the first command that fails.
#
# What is run, and what is not (each skipped line is printed with its reason):
# - only lines whose command is `ferry`; `cargo …` (`cargo run --release -- demo`, `cargo test …`: a release
#   build and the test suite are not setup commands; the debug binary is used instead), `sudo apt-get …` and
#   `eval "$(scripts/test-databases.sh)"` (the database tests' own setup) are skipped explicitly;
# - `ferry` is the binary in $FERRY_BIN (default: $CARGO_TARGET_DIR/debug/ferry, else target/debug/ferry), put
#   first on PATH;
# - a line ending in `&` is a server: its output goes to <name>.log, the script waits for its "listening" line
#   and stops it (SIGTERM) at the end; `ferry connector run` (the agent, which never ends) is run the same way;
# - the README's placeholders get real values: `/opt/ferry` -> <tmp>/opt/ferry, `/path/to/erp.db` -> the sample
#   ERP that `ferry sample-erp` writes (the README's way to try without an ERP) with `--sample` (its mapping; a
#   real ERP's mapping is filled in by hand), `ferry1.…` -> the token `ferry comms tenant add` printed,
#   `report.csv` is created before `ferry app publish`.
# The servers listen on their default ports (127.0.0.1: 9443, 9444, 9445, 2223, 8443, 8444, 2222): those must be
# free. Usage: scripts/readme-commands.sh [README.md]
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
readme="${1:-$here/README.md}"
bin="${FERRY_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/ferry}"
[ -x "$bin" ] || { echo "readme-commands: no ferry binary at $bin (cargo build -p ferry, or set FERRY_BIN)" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-readme.XXXXXX")"
mkdir -p "$work/bin" "$work/opt/ferry"
ln -s "$bin" "$work/bin/ferry"
export PATH="$work/bin:$PATH"
export FERRY_LOG_FORMAT=text
cd "$work" || exit 2
echo "readme-commands: working in $work"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  pids=()
}
finish() {
  local code=$?
  stop_all
  if [ "$code" = 0 ] && [ -z "${FERRY_README_KEEP:-}" ]; then rm -rf "$work"; else echo "readme-commands: kept $work"; fi
  exit "$code"
}
trap finish EXIT

fail() {
  echo "readme-commands: FAILED: $1" >&2
  for f in "$work"/*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}

# wait (30 s) for `pattern` in `file`, while `pid` runs
wait_for() {
  local file="$1" pattern="$2" pid="$3"
  for _ in $(seq 1 300); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || fail "$(head -c 200 "$file") (the process exited)"
    sleep 0.1
  done
  fail "no \"$pattern\" in $file within 30 s"
}

# The ```sh blocks of the README, one command per line (comments and blank lines dropped).
mapfile -t lines < <(awk '/^ *```sh/{on=1; next} /^ *```/{on=0} on' "$readme")

token=""
ran=0
n=0
for raw in "${lines[@]}"; do
  line="$(printf '%s' "$raw" | sed -e 's/^ *//')"
  cmd="${line%%#*}"                       # the command without its comment
  cmd="$(printf '%s' "$cmd" | sed -e 's/ *$//')"
  [ -z "$cmd" ] && continue
  first="${cmd%% *}"
  case "$first" in
    ferry) ;;
    cargo) echo "SKIP (a cargo build or the test suite, not setup; the debug binary stands for it): $cmd"; continue ;;
    sudo) echo "SKIP (installs packages): $cmd"; continue ;;
    eval) echo "SKIP (the database tests' setup, run by .ci/run): $cmd"; continue ;;
    *=*) echo "SKIP (a test run with variables): $cmd"; continue ;;
    *) fail "a README command this script does not know how to run: $cmd" ;;
  esac
  # placeholders
  cmd="${cmd//\/opt\/ferry/$work/opt/ferry}"
  if [[ "$cmd" == *"/path/to/erp.db"* ]]; then
    [ -e "$work/opt/ferry/erp.db" ] || ferry sample-erp "$work/opt/ferry/erp.db" >sample-erp.log 2>&1 \
      || fail "ferry sample-erp"
    cmd="${cmd//\/path\/to\/erp.db/$work/opt/ferry/erp.db} --sample"
  fi
  if [[ "$cmd" == *"ferry1.…"* ]]; then
    [ -n "$token" ] || fail "no token printed before: $cmd"
    cmd="${cmd//ferry1.…/$token}"
  fi
  [[ "$cmd" == *"publish"*"report.csv"* ]] && printf 'item,note\nA-1,from the README\n' >report.csv
  n=$((n + 1))
  background=""
  if [[ "$cmd" == *"&" ]]; then
    background=1
    cmd="${cmd%&}"
  elif [[ "$cmd" == "ferry connector run "* ]]; then
    background=1
  fi
  echo "+ $cmd"
  if [ -n "$background" ]; then
    log="$work/bg-$n.log"
    bash -c "exec $cmd" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    case "$cmd" in
      *"app serve"*) wait_for "$log" "app server listening" "$pid" ;;
      *"comms serve"*) wait_for "$log" "comms server listening" "$pid" ;;
      *"connector run"*) sleep 3; kill -0 "$pid" 2>/dev/null || fail "$cmd exited: $(tail -n 5 "$log")" ;;
      *) sleep 1 ;;
    esac
  else
    out="$work/cmd-$n.log"
    bash -c "$cmd" >"$out" 2>&1
    code=$?
    lines="$(wc -l <"$out")"
    if [ "$lines" -le 45 ]; then
      sed -e 's/^/    /' "$out"
    else # long output: its head and its end (where a command says how it ended)
      sed -e 's/^/    /' "$out" | head -n 35
      echo "    … $((lines - 40)) lines …"
      sed -e 's/^/    /' "$out" | tail -n 5
    fi
    [ "$code" = 0 ] || fail "exit $code: $cmd"
    t="$(grep -o 'ferry1\.[A-Za-z0-9._~-]*' "$out" | head -n 1)"
    [ -n "$t" ] && token="$t"
  fi
  ran=$((ran + 1))
done
[ "$ran" -ge 10 ] || fail "only $ran commands found in $readme"
echo "readme-commands: all $ran commands of $readme ran"
