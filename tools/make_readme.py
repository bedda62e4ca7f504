"""Write README.md from nbs/index.ipynb (`nbdev_readme` does the same where Quarto exists) and CHANGELOG.md from
nbs/changelog.ipynb, without Quarto.

Hidden cells and `#|` directives are dropped, notebook links point into nbs/.
`--check` exits 1 when a file is out of date instead of writing it.
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HIDE = {'hide', 'hide_input', 'exporti', 'eval: false'}
PAGES = {'README.md': 'index.ipynb', 'CHANGELOG.md': 'changelog.ipynb'}   # generated file: its notebook in nbs/


def directives(source: str) -> set:
    """The `#|` directives of a cell."""
    return {ln.strip()[2:].strip() for ln in source.splitlines() if ln.strip().startswith('#|')}


def readme_text(nb_path: Path) -> str:
    """The README Markdown for the notebook at `nb_path`."""
    nb = nbformat.read(nb_path, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'code':
            if directives(cell.source) & HIDE:
                continue
            cell.source = '\n'.join(ln for ln in cell.source.splitlines() if not ln.strip().startswith('#|'))
        cells.append(cell)
    nb.cells = cells
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r'\]\((\w[\w-]*\.ipynb)\)', r'](nbs/\1)', body)
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return (f'<!-- WARNING: generated from nbs/{nb_path.name} by tools/make_readme.py; edit the notebook -->\n\n'
            + body)


def main() -> int:
    """Write or check README.md and CHANGELOG.md."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--check', action='store_true', help='fail if README.md or CHANGELOG.md is out of date')
    args = ap.parse_args()
    stale = 0
    for name, nb in PAGES.items():
        text, path = readme_text(ROOT / 'nbs' / nb), ROOT / name
        if not args.check:
            path.write_text(text)
            print(f'wrote {name}')
        elif not path.exists() or path.read_text() != text:
            print(f'{name} is out of date: run python tools/make_readme.py')
            stale += 1
        else: print(f'{name} is up to date')
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
