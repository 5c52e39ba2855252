# syntax=docker/dockerfile:1
# modelyard, CPU image. Build it with `make image` (scripts/image.sh): that builds the wheelhouse
# on the host (`pip wheel ".[all]"`) and passes it as the build context, so nothing here reaches a
# package index. By hand: put the wheels in DIR/wheels, then
#   docker build -f Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t modelyard/modelyard:0.1.0 DIR
# One image for every role; the command picks it: `serve` (control plane + a replica, SQLite),
# `control-plane`, `inference` (a replica), `queue-worker`. Configuration comes from MODELYARD_*
# variables; models, the database and the artifact cache live under the volume /var/lib/modelyard.
ARG BASE_IMAGE=python:3.11-slim

# -- install: the virtualenv, from the wheelhouse only ---------------------------------------------
FROM ${BASE_IMAGE} AS install
ARG EXTRAS=all
# strip (binutils), for this stage only: the wheels' shared libraries carry ~85 MB of symbols
RUN command -v strip >/dev/null || { apt-get update \
    && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*; }
COPY wheels /wheels
# pip runs from its own wheel (Debian's python3 has no ensurepip). Size: third-party test suites
# go (~70 MB), shared libraries lose their symbol tables (~80 MB; not the libraries auditwheel
# vendored in <package>.libs/, whose patched layout strip breaks), and bytecode is written only
# for what the roles and the engines import (the non-root user cannot write it at run time, so
# those would compile on every start), not for every module installed (~70 MB more). The last
# step imports every engine's library, so a library the stripping broke fails the build.
RUN python3 -m venv --without-pip /opt/modelyard \
    && pip_wheel=$(ls /wheels/pip-*.whl) \
    && /opt/modelyard/bin/python "$pip_wheel/pip" install --no-index --find-links /wheels \
       --no-cache-dir --disable-pip-version-check --no-compile "modelyard[${EXTRAS}]" \
    && site=$(/opt/modelyard/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && find "$site" -mindepth 2 -depth -type d -name tests ! -path "$site/modelyard/*" -exec rm -rf {} + \
    && find "$site" -name '*.so*' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} + \
    && /opt/modelyard/bin/python /wheels/image_bytecode.py

# -- the image -------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/modelyard/bin:$PATH \
    VIRTUAL_ENV=/opt/modelyard \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODELYARD_HOME=/var/lib/modelyard \
    MODELYARD_HOST=0.0.0.0 \
    MODELYARD_PORT=8080
# libgomp1: the OpenMP runtime that lightgbm and xgboost load (the base made by
# scripts/base-image.sh has it already, so that build needs no network at all)
RUN if ! ldconfig -p | grep -q 'libgomp\.so\.1'; then \
      apt-get update \
      && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin modelyard \
    && mkdir -p /var/lib/modelyard \
    && chown 1000:1000 /var/lib/modelyard
COPY --from=install /opt/modelyard /opt/modelyard
USER 1000
WORKDIR /var/lib/modelyard
VOLUME /var/lib/modelyard
EXPOSE 8080
# /health/ready: 200 once the replica's models are loaded. The `inference` and `serve` roles
# answer it; compose gives the control plane (`/api/health`) and queue workers their own checks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('MODELYARD_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["modelyard"]
CMD ["serve"]
