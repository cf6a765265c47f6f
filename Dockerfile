# One image for every radps role: operator, Prefect server and worker, flow runs, Dask
# scheduler and workers, dask operator.
#   docker build -t radps:0.1.0 .                      (public Python base, installs from the index)
#   make image                                        (local base, no registry, wheels built on the host)
# BASE_IMAGE must provide python3 (3.11+) with venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage 1: the virtualenv. The sources (and the wheels, when given) stay in this stage.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
# With a .wheels folder in the build context (what `make image` puts there), install only from
# it: no network needed during the build. Otherwise install from the package index.
RUN python3 -m venv /opt/radps \
 && if [ -d /src/.wheels ]; then \
      /opt/radps/bin/pip install --no-cache-dir --no-index --find-links /src/.wheels radps; \
    else \
      /opt/radps/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/radps/bin/radps --help >/dev/null

# Stage 2: the base plus the virtualenv.
FROM ${BASE_IMAGE}
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
