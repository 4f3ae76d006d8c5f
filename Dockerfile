# syntax=docker/dockerfile:1
#
# Gatehouse container image: gunicorn with gevent workers, configured by
# gunicorn.conf.py from GATEHOUSE_* variables.
#
#   docker build -t gatehouse:0.1.0 .
#
# The final stage runs as an unprivileged user and writes nothing outside
# mounted volumes, so it runs with a read-only root filesystem as long as
# /tmp is writable (gunicorn's worker heartbeat files and the default
# Prometheus multiprocess directory live there). docs/container.md has the
# details.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

#
# Stage 1: build the wheel and install it with its dependencies into a
# virtual environment. Only the environment is copied to the final stage.
#
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service

# constraints.txt pins every dependency to the version the test suite ran
# with, so the image gets exactly those.
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/gatehouse \
 && /opt/gatehouse/bin/pip install --constraint constraints.txt /dist/gatehouse-*.whl

#
# Stage 2: the runtime image, without compilers or the build context.
#
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime

# The backup jobs run from this image: `backup create` calls mariadb-dump and
# redis-cli (mariadb-client, redis-tools), and `backup verify` checks the RDB
# file with redis-check-rdb and restores into scratch servers: mariadbd and
# mariadb-install-db from mariadb-server-core, which lacks the full server
# package's service scripts and cluster tools, and redis-server. No init
# system runs in the container, so the servers run only as children of
# `backup verify`. The package versions follow the Debian release of the base
# image: Debian drops superseded package versions from its archive, so an
# exact pin would break later builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends \
      mariadb-client mariadb-server-core redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric id, so that Kubernetes can check runAsNonRoot without
# resolving a user name.
RUN groupadd --system --gid 10001 gatehouse \
 && useradd --system --uid 10001 --gid gatehouse --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin gatehouse

COPY --from=build /opt/gatehouse /opt/gatehouse

# gunicorn.conf.py and wsgi.py are not part of the package. gunicorn finds
# wsgi.py because /app is the working directory.
WORKDIR /app
COPY gunicorn.conf.py wsgi.py ./

# PYTHONDONTWRITEBYTECODE: pip compiled the package at install time, and a
# read-only root filesystem could not take new .pyc files anyway.
ENV PATH=/opt/gatehouse/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEHOUSE_BIND=0.0.0.0:8000

LABEL org.opencontainers.image.title="gatehouse" \
      org.opencontainers.image.description="Authentication service: JWT access tokens and rotating refresh tokens" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
EXPOSE 8000

# The `gatehouse` command runs from the same image with the entry point
# replaced: `docker run --entrypoint gatehouse IMAGE migrate`, or `command:`
# in Kubernetes.
ENTRYPOINT ["gunicorn", "--config", "/app/gunicorn.conf.py"]
CMD ["wsgi:app"]
