# The project's Airflow image: the official Airflow image with the project installed as an Airflow provider
# (`pip install .`: plugins/, include/ and the apache_airflow_provider entry point) and the DAGs in the image's
# DAGs folder. docker-compose.yaml builds it (`docker compose build`); the lab does not use it.
#
#   docker build -t cinder-async-migration:latest .
#   docker build --build-arg AIRFLOW_IMAGE_TAG=3.3.2-python3.11 -t cinder-async-migration:latest .
#
# The tag's Airflow version is the one requirements.txt pins (tests/unit/test_compose.py checks it). Its Python
# must stay 3.11: libnbd's Python binding below is Debian bookworm's, built for CPython 3.11 (the build fails at
# the `import nbd` check if it does not load).
ARG AIRFLOW_IMAGE_TAG=3.3.2-python3.11
FROM apache/airflow:${AIRFLOW_IMAGE_TAG}

# libnbd's Python binding (the host copy opens NBD volumes with it: include/block_devices.py).
# It is not on PyPI (the PyPI package named "nbd" is an unrelated notebook-diff tool: never install it), so it
# comes from Debian's python3-libnbd. Installing that package with apt would also install Debian's own Python
# 3.11 interpreter and stdlib, which the official image deliberately keeps out (its Python is built from source
# under /usr/python, Airflow lives in the virtualenv ~airflow/.local). So apt installs only the C library
# (libnbd0), and the binding's two files (nbd.py, libnbdmod.cpython-311-*.so, which does not link libpython)
# are taken from the python3-libnbd package of the same version, without installing it. Loading Debian's
# binding into a source-built CPython 3.11 virtualenv through a .pth file was tried outside Docker (pyenv's
# CPython 3.11.7, a venv without system site packages: import, connect to nbdkit, read and write); this
# Dockerfile itself is untested here (no Docker engine on the machine that wrote it).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnbd0 \
    && cd /tmp \
    && apt-get download "python3-libnbd=$(dpkg-query -W -f='${Version}' libnbd0)" \
    && dpkg-deb -x python3-libnbd_*.deb /tmp/python3-libnbd \
    && mkdir -p /opt/libnbd-python \
    && cp /tmp/python3-libnbd/usr/lib/python3/dist-packages/nbd.py \
          /tmp/python3-libnbd/usr/lib/python3/dist-packages/libnbdmod.cpython-*.so /opt/libnbd-python/ \
    && chmod -R a+rX /opt/libnbd-python \
    && rm -rf /tmp/python3-libnbd /tmp/python3-libnbd_*.deb \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# The host copy's checkpoints (MIGRATION_STATE_DIR in docker-compose.yaml): a named volume mounted here for the
# first time takes this folder's owner, so every worker can write to it. And the folder the project is built in
# below, owned by airflow before anything is copied into it (pip builds in the source tree).
RUN install -d -o airflow -g 0 -m 0775 /opt/airflow/migration-state /tmp/cinder-async-migration
USER airflow

# Put the binding on the path of Airflow's virtualenv (the `python` of user airflow), and fail the build now
# rather than a host copy later if it does not load.
RUN echo /opt/libnbd-python > "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/libnbd.pth" \
    && python -c "import nbd; nbd.NBD(); print('libnbd', nbd.__file__)"

# The project as an Airflow provider, from its own files (not _PIP_ADDITIONAL_REQUIREMENTS, which would install
# at every container start). apache-airflow is pinned to the image's own version so that pip cannot change it.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/cinder-async-migration/
COPY --chown=airflow:0 plugins/ /tmp/cinder-async-migration/plugins/
COPY --chown=airflow:0 include/ /tmp/cinder-async-migration/include/
# The check imports the installed code and finds the provider's entry point without starting Airflow (the airflow
# command would write an airflow.cfg with fresh secrets into the image).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /tmp/cinder-async-migration \
    && rm -rf /tmp/cinder-async-migration \
    && cd / && python -c "import include.host_copy, plugins.provider_info; \
from importlib.metadata import entry_points; \
assert 'plugins.provider_info:get_provider_info' in [e.value for e in entry_points(group='apache_airflow_provider')]"

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
