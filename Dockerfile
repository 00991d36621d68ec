# One image for the API and the worker; installs with the README's own command (make install).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/lethe
COPY pyproject.toml Makefile README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN make install PYTHON=python3

ENV PATH="/srv/lethe/.venv/bin:${PATH}" \
    HF_HUB_OFFLINE=1

EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
