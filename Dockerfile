# syntax=docker/dockerfile:1
#
# agentgate container image.
#
#   docker build -t agentgate .
#   docker run --rm -p 8080:8080 -e AGENTGATE_JWT_SECRET="$(openssl rand -hex 32)" agentgate
#
# AGENTGATE_JWT_SECRET (or a mounted agentgate.toml with a real [auth] secret)
# is required: the default command listens on 0.0.0.0, and `agentgate serve`
# refuses (exit 2, one line saying so) to listen beyond loopback with the
# demo secret that the shipped agentgate.toml falls back to.
#
# Runtime state (the SQLite store, the demo's source database) lives in
# /app/var, the only directory the service user can write to; mount a volume
# there to keep it across containers.

# One tag for both stages, so the venv built in the first runs in the second.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------
# build: install the project and its dependencies into a self-contained venv.
# Every dependency ships manylinux wheels, so no compiler is needed here.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ ./gateway/
COPY connectors/ ./connectors/
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir .

# ---------------------------------------------------------------------------
# runtime: the venv, the project files, a non-root user.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 agentgate \
    && useradd --system --uid 10001 --gid agentgate --home-dir /app \
       --no-create-home --shell /usr/sbin/nologin agentgate \
    && mkdir -p /app/var \
    && chown agentgate:agentgate /app/var

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# Code and configuration stay owned by root: the service can read, not change them.
COPY gateway/ ./gateway/
COPY connectors/ ./connectors/
COPY policies/ ./policies/
COPY demo/ ./demo/
COPY agentgate.toml pyproject.toml README.md ./

USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["agentgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
