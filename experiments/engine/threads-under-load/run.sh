#!/usr/bin/env bash
# Each setting quiet, then beside one busy Python loop (the other core's worth of work).
# Part 1: one-query encoding at 2 / 1 threads and OpenMP wait policies; part 2: search with the thread choice.
set -euo pipefail
py=.venv/bin/python
here=experiments/engine/threads-under-load
for load in quiet busy; do
  if [ "$load" = busy ]; then python3 -c 'while True: pass' & busy=$!; trap 'kill $busy' EXIT; sleep 1; fi
  echo "# $load"
  $py $here/threads.py 2; OMP_WAIT_POLICY=PASSIVE $py $here/threads.py 2; $py $here/threads.py 1
  for mode in on off one; do $py $here/search.py $mode; done
done
