# Test bed only: a stand-in for python:3.11-slim (the operator image's base) where no
# registry is reachable. The context is a Debian bookworm root filesystem (Python 3.11)
# that testbed/images.py makes with mmdebstrap.
FROM scratch
ADD rootfs.tar /
# python:3.11-slim has a pip-installable Python first on PATH. Debian's own Python
# refuses `pip install` (PEP 668), so a virtual environment takes its place.
RUN python3 -m venv /opt/python
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
