#!/usr/bin/env bash
# The whole test suite (slow tests included), on CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure-venv.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$root"
exec "$root/.venv/bin/python" -m pytest -p no:warnings "$@"
