#!/usr/bin/env bash
# Build the sdist and the wheel, check their metadata as a package index would (twine check --strict), install the
# wheel into a fresh virtual environment with the runtime dependencies only, and run there: every module's import,
# the README's drop-in example, stablesam-train --quick on generated data, stablesam-reproduce --help, and a
# missing extra's message. Touches nothing outside a temporary folder (removed at the end). .ci/run calls it;
# it runs alone too: bash tools/check_wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"; echo "(temporary folder removed: $(( $(date +%s) - start ))s in all)"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
unset PYTHONPATH   # the venv must see the installed wheel, never a source tree

echo "== build: sdist and wheel"
python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
ls "$work/dist"
echo "== twine check --strict"
python -m twine check --strict "$work"/dist/*

echo "== fresh virtual environment, the wheel with its runtime dependencies only"
python -m venv "$work/venv"
py="$work/venv/bin/python"
t0=$(date +%s)
"$py" -m pip install -q --no-compile "$work"/dist/*.whl   # no .pyc for torch's thousands of files: faster
echo "installed in $(( $(date +%s) - t0 ))s"
cd "$work"   # away from the source tree: every import below comes from the installed wheel

echo "== import: the version, every module, no notebook or test tools"
want=$(sed -n 's/^version *= *//p' "$repo/settings.ini")
"$py" - "$want" <<'PY'
import importlib, importlib.util, pkgutil, sys
import stablesam
assert stablesam.__file__.startswith(sys.prefix), f"stablesam imported from {stablesam.__file__}, not the venv"
assert stablesam.__version__ == sys.argv[1], (stablesam.__version__, sys.argv[1])
modules = sorted(m.name for m in pkgutil.iter_modules(stablesam.__path__))
for name in modules: importlib.import_module(f'stablesam.{name}')
dev_only = [m for m in ('nbdev', 'fastcore', 'pytest', 'jupytext', 'lightning', 'transformers', 'tensorboard', 'wandb',
                        'submitit') if importlib.util.find_spec(m) is not None]
assert not dev_only, f"installed without being runtime dependencies: {dev_only}"
print(f"stablesam {stablesam.__version__}: {len(modules)} modules import")
PY

echo "== the README's drop-in example"
awk '/^## Drop-in use/{s=1} s&&/^```/{if(c){exit} c=1; next} c' "$repo/README.md" > readme_example.py
test -s readme_example.py
"$py" readme_example.py
"$py" -c "print('README example ran:', open('readme_example.py').read().count('\n'), 'lines')"

echo "== stablesam-train --quick on generated data"
"$py" -c "from stablesam.data import write_fake_mnist; write_fake_mnist('data', n_train=512, n_test=128)"
"$work/venv/bin/stablesam-train" --dataset mnist --data-root data --no-download --model fcn --optimizer stablesam \
    --quick --out run --no-progress --logger csv --log-every 2
"$py" - <<'PY'
import json
config = json.load(open('run/config.json'))
import stablesam
assert config['versions']['stablesam'] == stablesam.__version__, config['versions']
print('run/config.json records stablesam', config['versions']['stablesam'])
PY

echo "== stablesam-reproduce --help"
"$work/venv/bin/stablesam-reproduce" --help | head -3

echo "== a missing extra is named"
set +e
msg=$("$work/venv/bin/stablesam-train" --dataset mnist --data-root data --no-download --model fcn --quick \
      --out run_tb --no-progress --logger tensorboard 2>&1)
rc=$?
set -e
echo "$msg" | tail -1
[ "$rc" -eq 2 ] && [[ "$msg" == *"pip install 'stablesam[tensorboard]'"* ]] || { echo "expected exit 2 naming the extra, got $rc"; exit 1; }
"$py" -c "
from stablesam.integrations import SAMTrainer
try: SAMTrainer()
except ImportError as e: print(e)
else: raise SystemExit('SAMTrainer built without transformers')"

echo "== wheel check passed in $(( $(date +%s) - start ))s"
