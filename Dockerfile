# syntax=docker/dockerfile:1
# modelyard, CPU image: `docker build -t modelyard/modelyard:0.1.0 .`
# One image for every role; the command picks it: `serve` (control plane + a replica),
# `inference` (a replica), `queue-worker`. Configuration comes from MODELYARD_* variables.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELYARD_HOME=/var/lib/modelyard \
    MODELYARD_HOST=0.0.0.0 \
    MODELYARD_PORT=8080
# libgomp1: OpenMP runtime that lightgbm and xgboost load.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[all]" && rm -rf /src
RUN useradd --uid 1000 --user-group --create-home modelyard \
    && mkdir -p /var/lib/modelyard \
    && chown 1000:1000 /var/lib/modelyard
USER 1000
WORKDIR /var/lib/modelyard
EXPOSE 8080
ENTRYPOINT ["modelyard"]
CMD ["serve"]
