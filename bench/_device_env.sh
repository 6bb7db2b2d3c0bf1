# Sourced by bench/gpu*.sh: the environment of a bare GPU machine that got results/device/ carried.
D=results/device
if ! python3 -c "import optuna" 2>/dev/null && [[ -d $D/wheels ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $D/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # proxynas from this tree, installed or not
DATA_PATH=${DATA_PATH:-$([[ -f $D/cifar10-jpeg.tar.gz ]] && echo $D/cifar10-jpeg.tar.gz || echo ../shared/datasets/cifar10-jpeg.tar.gz)}
[[ -z ${PROXYNAS_REFERENCE:-} && -d $D/DatasetCondensation ]] && export PROXYNAS_REFERENCE=$D/DatasetCondensation
export PROXYNAS_CACHE=${PROXYNAS_CACHE:-/tmp/proxynas-cache}
