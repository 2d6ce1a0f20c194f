FROM python:3.11-slim
WORKDIR /app
# Every package of pyproject's [tool.setuptools.packages.find], one COPY each (the context has
# .venv and .git: no COPY . .). constraints.txt: the tested versions, as `make install` uses.
COPY pyproject.toml README.md constraints.txt ./
COPY core ./core
COPY modelproxy ./modelproxy
COPY emulator ./emulator
COPY worker ./worker
COPY producer ./producer
COPY gateway ./gateway
RUN pip install --no-cache-dir -c constraints.txt .
USER nobody
