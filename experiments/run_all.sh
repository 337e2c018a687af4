#!/bin/sh
# Regenerate every number in experiments/results/ (single core pinned; shared data at ../shared).
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
taskset -c ${CORE:-1} $PY experiments/mnist_table.py
taskset -c ${CORE:-1} $PY experiments/squeezenet.py --keep /tmp/qcnn-squeezenet
taskset -c ${CORE:-1} $PY experiments/squeezenet_time.py --keep /tmp/qcnn-squeezenet
taskset -c ${CORE:-1} $PY experiments/squeezenet_swap.py
taskset -c ${CORE:-1} $PY experiments/ec_study.py
$PY experiments/collect.py
