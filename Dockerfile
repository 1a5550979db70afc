# One image for every coordinator service of compose.yaml: the package with its CLI extra (rich) and
# prometheus_client for the metrics exporter.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module: the official slim image
# by default; scripts/compose-test passes a base image it made locally with debootstrap, so a machine
# that reaches no image registry can build it too.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim
FROM ${BASE_IMAGE}

# PYTHONFAULTHANDLER: a process that hangs dumps every thread's traceback to its log on SIGABRT.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONFAULTHANDLER=1 \
    PATH=/opt/coordinator/bin:$PATH

WORKDIR /src
# deploy/wheelhouse/ holds only a README in git. When it also holds wheels (scripts/compose-test fills
# it with `pip download` on the host), every dependency and the build backend come from there and the
# build needs no network; otherwise pip asks the package index, as usual.
COPY deploy/wheelhouse ./wheelhouse
# Only what the wheel is built from, so editing tests or docs does not invalidate the install layer.
COPY pyproject.toml README.md ./
COPY lua ./lua
COPY coordinator ./coordinator
RUN python3 -m venv /opt/coordinator \
    && if ls wheelhouse/*.whl >/dev/null 2>&1; then \
           pip install --no-index --find-links wheelhouse '.[cli,prometheus]'; \
       else \
           pip install '.[cli,prometheus]'; \
       fi \
    && useradd --create-home --uid 10001 coordinator \
    && rm -rf /src

# /app holds the mounted coordinator.toml, the CLI's default config path; no source tree here, so
# `python -m coordinator` runs the installed package (python is the venv's, first on PATH).
WORKDIR /app
USER coordinator
CMD ["python", "-m", "coordinator", "--help"]
