"""Check the docs without Quarto: process the notebooks as `nbdev_docs` does, render each page to HTML.

`nbdev_proc_nbs` writes the processed notebooks to _proc/ (front matter, `show_doc` API entries, hidden
cells removed); each is rendered here with nbconvert to _docs_html/NAME.html, the page title and subtitle
taken from the front matter as Quarto would. Where Quarto is not installed a stand-in `quarto` is put on
PATH for `nbdev_proc_nbs`, which only checks that the program exists before processing.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from html import escape
from pathlib import Path

import nbformat
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor

ROOT = Path(__file__).resolve().parents[1]
PROC, OUT = ROOT / '_proc', ROOT / '_docs_html'


def process_notebooks() -> Path:
    """Run `nbdev_proc_nbs` (with a stand-in quarto where none is installed); return the processed nbs folder."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if not any((Path(d) / 'quarto').exists() for d in env.get('PATH', '').split(os.pathsep)):
            fake = Path(tmp) / 'quarto'
            fake.write_text('#!/bin/sh\nexit 0\n')
            fake.chmod(0o755)
            env['PATH'] = tmp + os.pathsep + env.get('PATH', '')
        subprocess.run(['nbdev_proc_nbs', '--n_workers', '1'], cwd=ROOT, env=env, check=True)
    return PROC


def front_matter(nb) -> dict:
    """The title/description of a processed notebook's YAML front matter (first raw cell)."""
    for cell in nb.cells:
        if cell.cell_type == 'raw' and cell.source.lstrip().startswith('---'):
            return yaml.safe_load(cell.source.strip().strip('-')) or {}
    return {}


QUARTO_ATTRS = re.compile(r'\{(?:target|style|\.)[^{}]*\}')


def quarto_cell(cell):
    """A cell as Quarto shows it: `#|` options applied (`echo: false` hides the code, `output: asis` shows
    Markdown output as page content) and removed from the code shown; Quarto link attributes dropped."""
    if cell.cell_type != 'code':
        return cell
    lines = cell.source.splitlines()
    opts = dict(ln.strip()[2:].strip().partition(':')[::2] for ln in lines if ln.strip().startswith('#|'))
    opts = {k.strip(): v.strip() for k, v in opts.items()}
    if opts.get('echo') == 'false' and opts.get('output') == 'asis':
        md = [''.join(o['data']['text/markdown']) for o in cell.get('outputs', [])
              if 'text/markdown' in o.get('data', {})]
        return nbformat.v4.new_markdown_cell(QUARTO_ATTRS.sub('', '\n'.join(md)))
    cell.source = '\n'.join(ln for ln in lines if not ln.strip().startswith('#|'))
    if opts.get('echo') == 'false':
        cell.metadata.setdefault('tags', []).append('remove_input')
    return cell


def render_page(nb_path: Path, mathjax_url: str | None = None) -> str:
    """HTML for one processed notebook, with its front matter shown as title and subtitle."""
    nb = nbformat.read(nb_path, as_version=4)
    fm = front_matter(nb)
    head = f"# {fm.get('title', nb_path.stem)}\n\n"
    if fm.get('description'):
        head += f"<div class='description'>{escape(fm['description'])}</div>\n"
    nb.cells = [nbformat.v4.new_markdown_cell(head)] + [quarto_cell(c) for c in nb.cells if c.cell_type != 'raw']
    kw = dict(mathjax_url=mathjax_url) if mathjax_url else {}
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True, **kw)
    remove_inputs = TagRemovePreprocessor(remove_input_tags={'remove_input'}, enabled=True)
    exporter.register_preprocessor(remove_inputs, enabled=True)
    html, _ = exporter.from_notebook_node(nb)
    return html


def render_all(out: Path = OUT, mathjax_url: str | None = None) -> dict:
    """Process and render every notebook; return {page name: html path}."""
    proc = process_notebooks()
    out.mkdir(exist_ok=True)
    pages = {}
    for nb_path in sorted(proc.glob('*.ipynb')):
        if nb_path.name.startswith('_'):
            continue
        dest = out / (nb_path.stem + '.html')
        dest.write_text(render_page(nb_path, mathjax_url))
        pages[nb_path.stem] = dest
    return pages


def main() -> None:
    """Render the docs pages and list them."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--mathjax-url', help='MathJax script to typeset with (default: nbconvert\'s CDN copy); '
                    'offline, e.g. file:///PATH/node_modules/mathjax/MathJax.js?config=TeX-AMS_CHTML-full '
                    'from `npm install mathjax@2` (nbconvert configures MathJax 2)')
    args = ap.parse_args()
    for name, path in render_all(mathjax_url=args.mathjax_url).items():
        print(f'{name}: {path.relative_to(ROOT)}')


if __name__ == '__main__':
    sys.exit(main())
