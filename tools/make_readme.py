"""Write README.md from nbs/index.ipynb without Quarto (`nbdev_readme` does the same where Quarto exists).

Hidden cells and `#|` directives are dropped, notebook links point into nbs/.
`--check` exits 1 when README.md is out of date instead of writing it.
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HIDE = {'hide', 'hide_input', 'exporti', 'eval: false'}


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
    return '<!-- WARNING: generated from nbs/index.ipynb by tools/make_readme.py; edit the notebook -->\n\n' + body


def main() -> int:
    """Write or check README.md."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--check', action='store_true', help='fail if README.md is out of date')
    args = ap.parse_args()
    text, readme = readme_text(ROOT / 'nbs' / 'index.ipynb'), ROOT / 'README.md'
    if args.check:
        if not readme.exists() or readme.read_text() != text:
            print('README.md is out of date: run python tools/make_readme.py')
            return 1
        print('README.md is up to date')
        return 0
    readme.write_text(text)
    print(f'wrote {readme.relative_to(ROOT)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
