# Medvec's cluster image: the code server, every run pod and every step pod (deploy/cluster/values.yaml
# names it). CPU by default; `--build-arg VARIANT=cuda` installs the CUDA torch build for the GPU pool.
#   docker build -t registry.example.com/medvec:2026.11.29 .            (or: make image)
#   docker build --build-arg VARIANT=cuda -t registry.example.com/medvec:2026.11.29-cuda .
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# The extras the cluster profile needs (dagster-k8s, dagster-postgres, psycopg): tests/test_dockerfile.py
# checks this list against pyproject.toml.
ARG MEDVEC_EXTRAS=cluster

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MEDVEC_PROFILE=cluster \
    MEDVEC_CACHE_DIR=/var/cache/medvec \
    DAGSTER_HOME=/home/medvec/dagster

WORKDIR /opt/medvec
# torch first, from the index that matches the variant, so pip never resolves a multi-GB CUDA build on CPU.
RUN if [ "$VARIANT" = "cuda" ]; then pip install "torch==${TORCH_VERSION}"; \
    else pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; fi

COPY pyproject.toml README.md ./
COPY medvec ./medvec
COPY pipelines ./pipelines
COPY assets ./assets
COPY resources ./resources
COPY workspace.yaml ./
RUN pip install ".[${MEDVEC_EXTRAS}]"

# Run as a non-root user; the model cache is a node-local volume mount point (values.yaml).
RUN useradd --create-home --uid 10001 medvec \
    && mkdir -p /var/cache/medvec /home/medvec/dagster \
    && chown -R medvec:medvec /var/cache/medvec /home/medvec/dagster
USER 10001

EXPOSE 3030
# The code server the Helm chart starts (values.yaml: dagsterApiGrpcArgs -m pipelines.definitions).
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "pipelines.definitions"]
