#!/usr/bin/env bash
# Runs jobs from stdin, JOBS at a time (default 2), one torch thread each:
#   tools/jobs.sh OUT_DIR < lines      each line: NAME ENTRY OVERRIDE...  →  ENTRY OVERRIDE... in OUT_DIR/NAME
# ENTRY is train.py or study.py; lines run in the order given (put the longest first).
# One thread per process: several multi-threaded torch processes on a small machine slow each
# other down many times over. A job's own outcome (diverged, oom) is in its summary.json; a job
# that crashes makes this script exit non-zero once the others are done.
set -euo pipefail
out=${1:?usage: tools/jobs.sh OUT_DIR < jobs}
py=${PY:-.venv/bin/python}
mkdir -p "$out"
grep -v -E '^\s*(#|$)' | xargs -P "${JOBS:-2}" -L 1 bash -c '
  name=$1; entry=$2; shift 2
  mkdir -p "$(dirname "'"$out"'/$name")"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "'"$py"'" "$entry" "$@" hydra.run.dir="'"$out"'/$name" \
    > "'"$out"'/$name.log" 2>&1 || { echo "job $name failed (log: '"$out"'/$name.log)" >&2; exit 1; }
  tail -n 1 "'"$out"'/$name.log"' _
