#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the whole method on fresh synthetic patients with the bundled
# CT-CLIP teacher: x2ct-pipeline demo (about 10 minutes on 2 CPU cores). Output: ${DEMO_OUT:-out/demo}
# (summary.json, report.html). Rerunning resumes; extra arguments go to the demo (e.g. --pretrain-teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/x2ct-pipeline demo --out "${DEMO_OUT:-out/demo}" "$@"
