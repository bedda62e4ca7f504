"""Sync a notebook from its nbs_py/ script, execute it in a fresh kernel to store outputs, clean it.

Usage: python tools/run_nb.py nbs_py/00_optim.py [more ...]   (or the .ipynb paths)
Cells flagged with a test flag (settings.ini tst_flags: long GPU/CPU runs) are not executed unless
--run-flagged is given; a skipped flagged cell keeps the outputs it had stored, if its source is unchanged.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def notebook_for(path: Path) -> Path:
    """The nbs/ notebook paired with `path` (a notebook or its nbs_py/ script)."""
    path = path.resolve()
    if path.suffix == '.ipynb':
        return path
    return (ROOT / 'nbs' / path.relative_to(ROOT / 'nbs_py')).with_suffix('.ipynb')


def flagged(cell, flags) -> bool:
    """Whether a code cell carries one of the nbdev test flags (`#| flag` on its own line)."""
    first = [ln.strip() for ln in cell.source.splitlines() if ln.strip().startswith('#|')]
    return any(ln[2:].strip() in flags for ln in first)


def run(nb_path: Path, skip_flagged: bool, timeout: int) -> None:
    """Execute `nb_path` in place with cwd nbs/ (as nbdev_test does); progress bars are off in stored outputs."""
    os.environ['TQDM_DISABLE'] = '1'  # the kernel inherits it: pages show results, not bar redraws
    nb = nbformat.read(nb_path, as_version=4)
    flags = {'notest', 'slow', 'gpu'}
    skipped = []
    if skip_flagged:
        for i, c in enumerate(nb.cells):
            if c.cell_type == 'code' and flagged(c, flags):
                skipped.append((i, c.source))
                c.source = '# (flagged cell not run here)\n' + c.source
                c.source = '\n'.join('# ' + ln for ln in c.source.splitlines())
    nb.metadata.setdefault('kernelspec', {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'})
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name='python3',
                   resources={'metadata': {'path': str(nb_path.parent)}}).execute()
    stored = {c.source: c for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == 'code'}
    for i, src in skipped:
        old = stored.get(src)
        nb.cells[i].source = src
        nb.cells[i].outputs = old.outputs if old is not None else []
        nb.cells[i].execution_count = old.execution_count if old is not None else None
    nbformat.write(nb, nb_path)
    print(f'{nb_path.relative_to(ROOT)} executed in {time.time() - t0:.1f}s')


def main() -> None:
    """Parse arguments and sync, run and clean each notebook."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('paths', nargs='+', type=Path)
    ap.add_argument('--run-flagged', dest='skip_flagged', action='store_false', default=True,
                    help='also run the cells flagged notest/slow/gpu (by default they keep their stored outputs)')
    ap.add_argument('--timeout', type=int, default=1800, help='per-cell timeout in seconds')
    args = ap.parse_args()
    for p in args.paths:
        nb_path = notebook_for(p)
        py = ROOT / 'nbs_py' / nb_path.relative_to(ROOT / 'nbs').with_suffix('.py')
        if py.exists():
            subprocess.run([sys.executable, '-m', 'jupytext', '--sync', '--quiet', str(py)], check=True, cwd=ROOT)
        run(nb_path, args.skip_flagged, args.timeout)
        subprocess.run(['nbdev_clean', '--fname', str(nb_path)], check=True, cwd=ROOT)
        subprocess.run([sys.executable, '-m', 'jupytext', '--sync', '--quiet', str(nb_path)], check=True, cwd=ROOT)


if __name__ == '__main__':
    main()
