"""Fail when a notebook in nbs/ and its percent-format script in nbs_py/ (jupytext.toml) differ."""
import sys
from pathlib import Path

import jupytext
from jupytext.config import load_jupytext_configuration_file

ROOT = Path(__file__).resolve().parents[1]


def paired_text(nb_path: Path, config) -> str:
    """The percent-format text that jupytext would write for `nb_path` under `config`."""
    nb = jupytext.read(nb_path)
    return jupytext.writes(nb, fmt='py:percent', config=config)


def main() -> int:
    """Compare every pair; print the ones out of sync and return the count."""
    config = load_jupytext_configuration_file(str(ROOT / 'jupytext.toml'))
    bad = []
    nbs = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    for nb_path in nbs:
        py_path = ROOT / 'nbs_py' / nb_path.relative_to(ROOT / 'nbs').with_suffix('.py')
        if not py_path.exists():
            bad.append(f'{py_path.relative_to(ROOT)} is missing (run: jupytext --sync {nb_path.relative_to(ROOT)})')
        elif py_path.read_text() != paired_text(nb_path, config):
            bad.append(f'{nb_path.relative_to(ROOT)} and {py_path.relative_to(ROOT)} differ '
                       f'(run: jupytext --sync on the one you edited)')
    for py_path in sorted((ROOT / 'nbs_py').rglob('*.py')):
        if not (ROOT / 'nbs' / py_path.relative_to(ROOT / 'nbs_py')).with_suffix('.ipynb').exists():
            bad.append(f'{py_path.relative_to(ROOT)} has no notebook in nbs/')
    for line in bad:
        print(line)
    print(f'{len(nbs)} notebook pairs checked, {len(bad)} out of sync')
    return len(bad)


if __name__ == '__main__':
    sys.exit(1 if main() else 0)
