#!/usr/bin/env bash
# `make bench` / `make bench-long`: runs benchmarks/NAME.py for each NAME given, on after a failure
# (one run gives every figure), and keeps all they print, stderr's progress too, in
# .ftctl/bench-<UTC time>.txt headed by the machine, the commit and the load before each one, and
# ending with every line of the run that names a goal.
# Exit status 1 when any benchmark failed.
set -u -o pipefail
python=${PYTHON:-.venv/bin/python}
mkdir -p .ftctl
log=.ftctl/bench-$(date -u +%Y%m%dT%H%M%SZ).txt
{
  echo "# benchmarks, $(date -u '+%F %T UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "# machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GB RAM"
  failed=()
  for b in "$@"; do
    echo
    echo "## benchmarks/$b.py ($(date -u +%T) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$SECONDS
    "$python" "benchmarks/$b.py" || failed+=("$b")
    echo "## $b: $((SECONDS - start)) s"
  done
  echo
  echo "# failed: ${failed[*]:-none}"
  [ ${#failed[@]} -eq 0 ]
} 2>&1 | tee "$log"
status=$?
{ echo; echo "# every line of this run that names a goal"; grep -iE '\bgoals?\b' "$log" || echo "(none)"; } | tee -a "$log"
echo "output: $log"
exit $status
