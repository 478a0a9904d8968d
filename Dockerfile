# One image for every bmsreboot role: worker, simulator, migrations, Flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 10001 bmsreboot
USER bmsreboot
ENV BMSREBOOT_DATA_DIR=/home/bmsreboot/data
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
