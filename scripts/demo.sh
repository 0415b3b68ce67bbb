#!/usr/bin/env bash
# The main job end to end on the embedded default: no API key, no GPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure-venv.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec "$root/.venv/bin/bpo-ray" demo "$@"
