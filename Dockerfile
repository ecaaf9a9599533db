# syntax=docker/dockerfile:1
# The fintech-operator image: one image for the operator, the rewards consumer and the notifier
# (the chart picks the command). Multi-stage: the build stage makes a wheel and a virtualenv;
# the final stage gets only that virtualenv, runs as a non-root user and has no build tools.
# tests/e2e/test_chart_image.py runs these same steps (wheel, fresh venv, entry point) here.

# Pinned to the Python line the tests run on; bump the patch for security releases.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fintech_operator ./fintech_operator
# Every dependency ships a manylinux wheel (psycopg[binary] included): no compiler needed.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/fintech \
 && /opt/fintech/bin/pip install --no-compile /wheels/*.whl \
 && /opt/fintech/bin/pip uninstall --yes pip setuptools \
 && /opt/fintech/bin/python -m compileall -q /opt/fintech/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fintech-operator" \
      org.opencontainers.image.description="Kubernetes-native card issuing: operator, rewards consumer, notifier" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fintech-dev/fintech-operator"
# No installer in the final image: the base's pip goes too; the virtualenv has none.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 fintech \
 && useradd --system --uid 10001 --gid fintech --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fintech
COPY --from=build /opt/fintech /opt/fintech
# MALLOC_ARENA_MAX: glibc's default of 8 malloc arenas per core lets a threaded Python process
# keep memory it freed in per-thread arenas; 2 bounds that (docs/operations.md, "Memory").
ENV PATH=/opt/fintech/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FINTECH_HEALTH_HOST=0.0.0.0
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9102
ENTRYPOINT ["fintech-operator"]
CMD ["run"]
