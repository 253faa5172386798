#!/bin/sh
# Runs in the test phase on the lab host, from the job's run directory:
# reports what the device booted and leaves it in artifacts/.
set -eu
mkdir -p artifacts
echo "$AGENT_NAME booted the image sent as an attachment" | tee artifacts/report.txt
ls -l attachments/provision attachments/test >> artifacts/report.txt
