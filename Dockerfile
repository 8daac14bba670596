# siteloc: API, worker and beat all run from this image (the command picks the role).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/siteloc

# CPU build of PyTorch by default (small); for GPU workers build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "torch>=2.3,<2.15"

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY ml ./ml
COPY bench ./bench
COPY migrations ./migrations
RUN pip install . && useradd --system --create-home siteloc && mkdir -p /data && chown siteloc /data
USER siteloc
ENV SITELOC_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["siteloc", "serve", "--host", "0.0.0.0", "--port", "8000"]
