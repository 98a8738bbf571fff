# stepwatch service image.
#
# CPU (default):  docker build -t stepwatch .
# CUDA:           docker build -t stepwatch:cuda \
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#                 docker run --gpus all -p 8765:8765 stepwatch:cuda
# (use the CUDA tag that PyTorch publishes for the torch version pinned in constraints.txt)
#
# Run:            docker run -p 8765:8765 stepwatch

# The browser dashboard, built from its lockfile; only its dist/ goes into the image.
FROM node:20-slim AS dashboard
WORKDIR /dashboard
COPY client/dashboard/package.json client/dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client/dashboard/build.mjs ./
COPY client/dashboard/src/ src/
RUN npm run build

FROM python:3.11-slim

# Where torch comes from. PyPI's Linux wheels pull the CUDA libraries (gigabytes); PyTorch's
# CPU index serves the small CPU build, its cuXXX indexes the CUDA builds.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# torch first, from its own index and at the pinned version, in a layer of its own so that
# source changes do not reinstall it; the package install below then finds it satisfied.
COPY constraints.txt ./
RUN pip install --constraint constraints.txt --index-url "${TORCH_INDEX_URL}" torch

COPY pyproject.toml README.md ./
COPY protocol/ protocol/
COPY client/ client/
COPY server/ server/
COPY --from=dashboard /dashboard/dist/ client/dashboard/dist/
RUN pip install --constraint constraints.txt . \
    && groupadd --gid 10001 stepwatch \
    && useradd --create-home --uid 10001 --gid 10001 stepwatch

# Numeric, so orchestrators can verify the container does not run as root.
USER 10001:10001
WORKDIR /home/stepwatch

EXPOSE 8765

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4)"]

ENTRYPOINT ["stepwatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765"]
