#!/usr/bin/env bash
# After the suite: no HAProxy or Consul started by a test may still run.
# Test processes are recognisable by their state directories under the temp dir (dfp-test-* and dfp-demo-*).
set -u
sleep 0.5
left=$(ps -eo pid=,args= | grep -E '(haproxy|consul) ' | grep -E 'dfp-(test|demo)-' | grep -v grep || true)
if [[ -n $left ]]; then
  echo "check-leaks: processes left behind by the test suite:" >&2
  echo "$left" >&2
  exit 1
fi
echo "check-leaks: no HAProxy or Consul process left behind"
