#!/bin/sh
# pip install inside an image build. A CA bundle passed as the build secret `pip_ca` (a TLS-intercepting
# proxy's) is used for this step only: it is mounted, never copied into a layer. Wheels in
# deploy/docker/wheels/ (bind-mounted at /wheels) are offered before the indexes.
set -eu
if [ -s /run/secrets/pip_ca ]; then
  export PIP_CERT=/run/secrets/pip_ca SSL_CERT_FILE=/run/secrets/pip_ca REQUESTS_CA_BUNDLE=/run/secrets/pip_ca
fi
if ls /wheels/*.whl >/dev/null 2>&1; then
  export PIP_FIND_LINKS=/wheels
fi
exec pip install "$@"
