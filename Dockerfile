# The operator image that charts/prefect-raypool-operator runs
# (image prefect-raypool-operator:<appVersion>):
#
#   docker build -t prefect-raypool-operator:0.1.0 .
#
# It holds the package with only the [operator] extra's dependencies from
# pyproject.toml: the operator never imports Prefect or Ray, so they stay out.
# BASE: any Python 3.11 with pip on PATH (the test bed builds a stand-in, images/testbed/).
ARG BASE=python:3.11-slim
FROM ${BASE}
# Extra pip options: "--no-index --find-links /wheels" for the test bed's offline build,
# or an internal index.
ARG PIP_OPTIONS=""
WORKDIR /build
COPY pyproject.toml README.md ./
COPY runner runner
COPY kuberay kuberay
COPY operator operator
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['operator']))" >requirements.txt \
 && pip install --no-cache-dir ${PIP_OPTIONS} -r requirements.txt \
 && pip install --no-cache-dir ${PIP_OPTIONS} --no-deps . \
 && cd / && rm -rf /build
WORKDIR /
# A named user: kopf asks the passwd database who it runs as (getpass.getuser()).
# Numeric below, so the chart's runAsNonRoot can verify it; the root filesystem is
# read-only.
RUN echo "raypool:x:65532:65532:prefect-raypool operator:/nonexistent:/usr/sbin/nologin" >>/etc/passwd \
 && echo "raypool:x:65532:" >>/etc/group
USER 65532:65532
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
CMD ["python", "-m", "prefect_raypool_operator", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
