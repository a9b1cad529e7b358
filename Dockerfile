# The operator image that charts/prefect-raypool-operator runs
# (image prefect-raypool-operator:<appVersion>):
#
#   docker build -t prefect-raypool-operator:0.1.0 .
#
# It holds the package with only the [operator] extra's dependencies from
# pyproject.toml: the operator never imports Prefect or Ray, so they stay out.
FROM python:3.11-slim
WORKDIR /build
COPY pyproject.toml README.md ./
COPY runner runner
COPY operator operator
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['operator']))" >requirements.txt \
 && pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps . \
 && cd / && rm -rf /build
WORKDIR /
# Numeric, so the chart's runAsNonRoot can verify it; the root filesystem is read-only.
USER 65532:65532
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
CMD ["kopf", "run", "-m", "prefect_raypool_operator.main", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
