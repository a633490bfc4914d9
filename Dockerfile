# syntax=docker/dockerfile:1
# The actor runtime, serving on 0.0.0.0:5556 with the process (bubblewrap) backend,
# or microVMs when /dev/kvm is passed in (docker-compose.kvm.yml) and they can boot.
#
#   docker build -t actor-sandbox-service .
#   docker run --rm -p 5556:5556 -e SERVICE_AUTH__TOKENS='["a-long-random-token-1234"]' \
#       --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#       --security-opt systempaths=unconfined actor-sandbox-service
#
# docker-compose.yml holds the same options with the reasons for each.
#
# Node.js 20 for JavaScript actors: Debian bookworm's nodejs is 18 (end of life), so the
# binary comes from the official Node 20 image, built on the same Debian release.
FROM node:20-bookworm-slim AS node

# Bookworm pinned: its python3 is 3.11, the version the sandbox harness is tested with.
FROM python:3.11-slim-bookworm

# bubblewrap builds each sandbox; python3 is Debian's /usr/bin/python3, the interpreter
# inside Python sandboxes. It is kept apart from the service's own Python (/usr/local) so
# actors do not see the service's packages. libstdc++6 is what the node binary links to.
# Node.js and npm (which installs JavaScript actors' dependencies: `service build`,
# docs/dependencies.md) come from the Node 20 image below, not from Debian (Node 18).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap python3 libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

# node and npm in /opt/node, which the sandbox mounts read-only, and on PATH, where the
# settings' default `sandbox.node = "node"` finds node (and `service build` finds npm beside it).
COPY --from=node /usr/local/bin/node /opt/node/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /opt/node/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /opt/node/bin/npm
ENV PATH=/opt/node/bin:$PATH

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Dependencies in their own layer, so a code change does not download them again.
COPY pyproject.toml README.md ./
# With the [microvm] extra: the image serves microVMs where /dev/kvm is passed in.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['microvm']))" >/tmp/requirements.txt \
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
