# llm2vec-gateway on a CUDA GPU.
#   docker build -t llm2vec-gateway .
#   docker run --gpus all -p 8000:8000 -v hf-cache:/models \
#     -e GATEWAY_API_KEY=sk-... -v $PWD/config:/srv/config:ro llm2vec-gateway \
#     python -m app serve --config /srv/config/sheared-llama.toml
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# The CUDA build of the pinned torch, then the pinned stack from pyproject.toml.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY config ./config
RUN pip install -e .

# Weights downloaded from the hub land in the volume, so a restart does not fetch them again.
RUN useradd --create-home --uid 10001 gateway && mkdir -p /models && chown gateway /models
ENV HF_HOME=/models \
    GATEWAY__SERVER__HOST=0.0.0.0
VOLUME ["/models"]
USER gateway

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s \
  CMD curl -fsS http://127.0.0.1:8000/health || exit 1
CMD ["python", "-m", "app", "serve", "--config", "/srv/config/default.toml"]
