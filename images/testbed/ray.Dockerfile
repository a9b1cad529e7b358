# Test bed only: a stand-in for rayproject/ray:<ray>-py311 (images/ray/Dockerfile's
# base) where no registry is reachable: the python stand-in plus Ray's wheels.
# Like rayproject/ray: a `ray` user (uid 1000, gid 100) owns the Python on PATH,
# so images built FROM it pip install as that user.
ARG BASE
FROM ${BASE}
ARG PIP_OPTIONS=""
ARG RAY_VERSION
RUN useradd --uid 1000 --gid 100 --create-home --shell /bin/bash ray \
 && chown -R 1000:100 /opt/python
USER 1000:100
ENV HOME=/home/ray
WORKDIR /home/ray
RUN pip install --no-cache-dir ${PIP_OPTIONS} "ray[default]==${RAY_VERSION}"
