# One image for every coordinator service of compose.yaml: the package with its CLI extra (rich) and
# prometheus_client for the metrics exporter.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from, so editing tests or docs does not invalidate the install layer.
COPY pyproject.toml README.md ./
COPY lua ./lua
COPY coordinator ./coordinator
RUN pip install '.[cli,prometheus]' \
    && useradd --create-home --uid 10001 coordinator

# /app holds the mounted coordinator.toml, the CLI's default config path; no source tree here, so
# `python -m coordinator` runs the installed package.
WORKDIR /app
USER coordinator
CMD ["python", "-m", "coordinator", "--help"]
