FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY modelproxy ./modelproxy
COPY worker ./worker
COPY producer ./producer
RUN pip install --no-cache-dir .
USER nobody
