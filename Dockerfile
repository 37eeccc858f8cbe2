# The API image: the package built as a wheel (compiling the Cython kernel)
# in a stage with a C compiler, then installed into a slim image without one.

FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY ext ext
COPY engine engine
COPY api api
COPY setapay_demo setapay_demo
COPY migrations migrations
# Wheels for the package and every dependency, so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels setapay-engine \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 setapay
USER setapay
WORKDIR /home/setapay
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
# The slim image has no curl; Python's own HTTP client probes liveness.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=10 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["setapay", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
