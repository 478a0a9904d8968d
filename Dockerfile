# One image for every bmsreboot role: worker, beat, simulator, migrations, metrics, Flower.
# Reproducible: every package at the version and sha256 of requirements.lock (made by
# scripts/lock from pyproject.toml's ranges; CI tests the same pins), no test tools, and the
# base pinned to Python's 3.11 line on one Debian release. tests/test_image.py reads this file
# and runs its install steps in a clean virtual environment.
FROM python:3.11-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
# The dependencies first, in a layer of their own: a change to the code reuses it.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
COPY migrations ./migrations
# The project itself, built with the locked setuptools: nothing more is fetched (--no-index),
# and pip check proves the lock held every dependency.
RUN pip install --no-index --no-deps --no-build-isolation . && pip check
# A user of its own, by number: Kubernetes' runAsNonRoot can verify a numeric USER. The code
# in /app stays root's (read-only to the user); the data directory is the user's.
RUN groupadd --gid 10001 bmsreboot \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin bmsreboot
USER 10001:10001
ENV BMSREBOOT_DATA_DIR=/home/bmsreboot/data
# The default command's check: this worker's own node answers a ping. The other roles run
# other commands and bring their own (docker-compose.yml gives each service one).
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD celery -A worker inspect ping -d "celery@$HOSTNAME" --timeout 5
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
