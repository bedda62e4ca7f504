"""The docs pages: every notebook processed as nbdev_docs does and rendered to HTML (tools/render_docs.py)."""
import importlib
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import render_docs  # noqa: E402


# the pages whose section is a figure of the paper or an experiment's result
FIGURE_PAGES = {'00_optim', '01c_theory_audit', '02_toy', '05_train', '06_stability', '07_landscape',
                '07a_landscape_experiment', '08_results', '09_reproduce'}


@pytest.fixture(scope='module')
def pages():
    """Render all pages once."""
    return render_docs.render_all()


def source_notebooks():
    """The notebooks that become pages."""
    return sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))


def default_exp(nb) -> str | None:
    """The module a notebook exports to."""
    for cell in nb.cells:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', cell.source, flags=re.M)
        if cell.cell_type == 'code' and m:
            return m.group(1)
    return None


def image_outputs(nb) -> int:
    """How many images the notebook's stored outputs hold, outside hidden cells."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != 'code' or re.search(r'^#\|\s*hide\s*$', cell.source, flags=re.M):
            continue
        n += sum('image/png' in o.get('data', {}) for o in cell.get('outputs', []))
    return n


def test_every_notebook_has_a_page(pages):
    assert set(pages) == {p.stem for p in source_notebooks()}


def test_sidebar_lists_every_page():
    sidebar = (ROOT / 'nbs' / 'sidebar.yml').read_text()
    for nb in source_notebooks():
        assert nb.name in sidebar, f'{nb.name} is missing from nbs/sidebar.yml'


@pytest.mark.parametrize('nb_path', source_notebooks(), ids=lambda p: p.stem)
def test_page(pages, nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    html = pages[nb_path.stem].read_text()
    title = next(re.search(r'^#\s+(.+)$', c.source, flags=re.M).group(1) for c in nb.cells
                 if c.cell_type == 'markdown' and re.search(r'^#\s+(.+)$', c.source, flags=re.M))
    assert re.search(r'<h1[^>]*>\s*' + re.escape(title.strip()), html), f'{nb_path.name}: no title {title!r}'
    assert 'class="description"' in html or "class='description'" in html, f'{nb_path.name}: no subtitle'
    module = default_exp(nb)
    if module:
        syms = [s for s in importlib.import_module(f'stablesam.{module}').__all__ if not s.isupper()]
        missing = [s for s in syms if not re.search(r'<h[234][^>]*>\s*(<[^>]+>)*\s*' + re.escape(s) + r'\b', html)]
        assert not missing, f'{nb_path.name}: no API entry for {missing}'
    n_img = image_outputs(nb)
    assert html.count('data:image/png;base64') >= n_img
    if nb_path.stem in FIGURE_PAGES:
        assert n_img > 0, f'{nb_path.name}: the page has no figure'
    proc = nbformat.read(render_docs.PROC / nb_path.name, as_version=4)
    errors = [o for c in proc.cells if c.cell_type == 'code' for o in c.get('outputs', [])
              if o.get('output_type') == 'error' or 'Traceback' in json.dumps(o)]
    assert not errors, f'{nb_path.name} shows an error output'
