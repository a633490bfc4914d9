# syntax=docker/dockerfile:1
# The actor runtime, serving on 0.0.0.0:5556 with the process (bubblewrap) backend,
# or microVMs when /dev/kvm is passed in and they can boot.
#
#   docker build -t actor-sandbox-service .
#   docker run --rm -p 5556:5556 -e SERVICE_AUTH__TOKENS='["a-long-random-token-1234"]' \
#       --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#       --security-opt systempaths=unconfined actor-sandbox-service
#
# docker-compose.yml holds the same options with the reasons for each.
#
# Bookworm pinned: its python3 is 3.11, the version the sandbox harness is tested with.
FROM python:3.11-slim-bookworm

# bubblewrap builds each sandbox; nodejs runs JavaScript actors (npm installs their
# dependencies: `service build`, docs/dependencies.md); python3 is Debian's
# /usr/bin/python3, the interpreter inside Python sandboxes. It is kept apart from the
# service's own Python (/usr/local) so actors do not see the service's packages.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap nodejs npm python3 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Dependencies in their own layer, so a code change does not download them again.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY service ./service
COPY config ./config
COPY schemas ./schemas
COPY manifests ./manifests
# Actors' dependency sets are installed into /app/.cache/deps (deps_dir) by the server at
# its first start, or ahead of time: `service build manifests/` in CI (bubblewrap needs user
# namespaces, which `docker build` rarely allows), then `COPY .cache/deps ./.cache/deps`
# here. See docs/dependencies.md.
# Editable, so the package stays in /app: the loader reads /app/schemas beside it
# (compose mounts the project's schemas/ there), not a copy in site-packages.
RUN pip install --no-deps -e .

# Relative paths in the settings (manifests, allowed_roots) resolve against /app.
# The server refuses to listen on 0.0.0.0 without a token: pass one at run time as
#   SERVICE_AUTH__TOKENS='["<token>"]'   (a TOML list; never bake it into the image).
ENV SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=5556

# Runs as root, on purpose. The process backend starts each sandbox as uid 65534 (nobody),
# a user that owns nothing here and is not the service's own user; switching to it takes
# root (CAP_SETUID). bubblewrap then runs as nobody, in a new user namespace with every
# capability dropped, so no actor code runs as root. Root also lets the backend use
# per-sandbox cgroups where the host hands the container writable ones; Docker mounts
# /sys/fs/cgroup read-only, so in a plain container memory and pids fall back to rlimits
# (`docker compose exec runtime service doctor` shows which is used).

EXPOSE 5556

# curl is not in the slim image; the service's Python is.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SERVICE_PORT', '5556') + '/healthz', timeout=4)"

STOPSIGNAL SIGTERM
CMD ["python", "-m", "service", "--config", "/app/config/settings.toml"]
