# syntax=docker/dockerfile:1
# Two images (see docs/operations-k8s.md, and k8s/image/kustomization.yaml where the manifests name them):
#
#   docker build -t ghcr.io/metadist/metadist:0.1.0 .                          # metadist + Ray + CPU torch
#   docker build -t ghcr.io/metadist/metadist:0.1.0-cu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .  # the same with CUDA torch (GPU nodes)
#   docker build -t ghcr.io/metadist/mlflow:3.17.2 --target mlflow-server .    # the MLflow tracking server
#
# Both run as uid 1000 (numeric, so Kubernetes can check runAsNonRoot), without a shell login or sudo.
ARG PYTHON_IMAGE=python:3.11-slim

# -- the MLflow tracking server: MLflow, its PostgreSQL driver and boto3 for the S3 (MinIO) artifact store ---------
FROM ${PYTHON_IMAGE} AS mlflow-server
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" "boto3>=1.34" \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin mlflow
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# -- metadist: the Ray head, the Ray workers and the job submitters all run this (the default target) ---------------
FROM ${PYTHON_IMAGE} AS metadist
# torch first, pinned, from the CPU index: an unpinned torch pulled in by a dependency would be a multi-GB CUDA
# build. For GPU workers pass a CUDA index (https://download.pytorch.org/whl/cuXYZ matching the nodes' driver).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Ray must be the same version on every node and equal the RayCluster's spec.rayVersion (k8s/ray/raycluster.yaml).
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin metadist
COPY pyproject.toml README.md /tmp/src/
COPY metadist /tmp/src/metadist
# torch repeated as a constraint: pip keeps the wheel installed above (2.13.0+cpu or +cuXYZ both match).
RUN pip install "/tmp/src[s3]" "ray[default]==${RAY_VERSION}" "torch==${TORCH_VERSION}" \
 && rm -rf /tmp/src
# The standard experiments; the RayJobs in k8s/jobs/ run `metadist train /opt/metadist/jobs/<job>.yaml`.
WORKDIR /opt/metadist
COPY jobs ./jobs
USER 1000:1000
ENV HOME=/home/metadist
