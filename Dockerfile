# syntax=docker/dockerfile:1
# image-cloner's container image: `docker build -t image-cloner:0.1.0 .`
#
# Two stages: the build stage resolves the dependencies from uv.lock into a virtualenv;
# the final stage is the slim Python base plus that virtualenv, nothing else (no uv,
# no compilers, no caches), run as a numeric non-root user so that Kubernetes can check
# runAsNonRoot without looking the name up.
#
# The base is pinned by tag. For reproducible builds pin it by digest as well, e.g.
#   FROM python:3.11-slim@sha256:<digest> AS build
# (`docker buildx imagetools inspect python:3.11-slim` prints the digest); both stages
# must use the same base, because the virtualenv links to its Python.

FROM python:3.11-slim AS build

# The pinned uv the Makefile uses; never a download at run time.
ARG UV_VERSION=0.13.8
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first (from the lock file only), so that a source change reuses this layer.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim

LABEL org.opencontainers.image.title="image-cloner" \
      org.opencontainers.image.description="Backs up the images of Kubernetes workloads into your own registry" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv

# 65532 is the conventional "nonroot" id of distroless images; no passwd entry needed.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["image-cloner"]
CMD ["run"]
