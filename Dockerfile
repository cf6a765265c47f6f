# One image for every radps role: operator, Prefect server and worker, flow runs, Dask
# scheduler and workers, dask operator.
#   docker build -t radps:0.1.0 .                      (public Python base, installs from the index)
#   make image                                        (local base, no registry, wheels built first)
# BASE_IMAGE must provide python3 (3.11+) with venv. Both bases here are Debian 13 with Python
# 3.13: Debian 12's 3.11.2 has CPython's concurrent ast.parse bug (see radps_flows.preload).
ARG BASE_IMAGE=python:3.13-slim-trixie

# Stage 1: the virtualenv. The sources (and the wheels, when given) stay in this stage.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies first, in a layer of their own that a change to radps's code reuses. With a
# .wheels folder in the build context (what `make image` puts there: the wheels and a
# requirements.txt pinning them) they come only from it, with no network; otherwise the radps
# install below takes them from the package index. (The glob lets .wheels be absent.)
COPY pyproject.toml .wheel[s] /wheels/
RUN python3 -m venv /opt/radps \
 && if [ -f /wheels/requirements.txt ]; then \
      /opt/radps/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        -r /wheels/requirements.txt; \
    fi
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY flows /src/flows
RUN if [ -f /wheels/requirements.txt ]; then \
      /opt/radps/bin/pip install --no-cache-dir --no-index --find-links /wheels /src; \
    else \
      /opt/radps/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/radps/bin/radps --help >/dev/null

# Stage 2: the base plus the virtualenv.
FROM ${BASE_IMAGE} AS final
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/tmp/prefect \
    PATH=/opt/radps/bin:$PATH
COPY --from=build /opt/radps /opt/radps
# Non-root (the Helm chart's pods run as this uid under the restricted Pod Security Standard).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/radps radps
USER 10001
WORKDIR /home/radps
CMD ["radps", "--help"]
