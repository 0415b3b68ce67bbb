#!/usr/bin/env bash
# The vLLM tests (marker `vllm`) in .venv-vllm, with vLLM's CPU build; builds it the first time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/ensure-venv.sh" vllm
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Fail, not skip, if vllm does not import there.
export BPO_RAY_REQUIRE_VLLM=1
cd "$root"
exec "$root/.venv-vllm/bin/python" -m pytest -p no:warnings --durations=5 -m vllm "${@:-tests/with_vllm}"
