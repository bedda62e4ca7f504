"""Versions and packaging: settings.ini, stablesam.__version__, config.json and the changelog agree; every optional
extra named in an error message exists in setup.py; the sdist carries what setup.py reads."""
import configparser
import re
import runpy
from pathlib import Path

import setuptools

import stablesam
from stablesam.runs import package_versions

ROOT = Path(__file__).resolve().parents[1]


def settings():
    """settings.ini's [DEFAULT] section."""
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']


def setup_kwargs(monkeypatch):
    """The keyword arguments setup.py passes to setuptools.setup."""
    seen = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kw: seen.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / 'setup.py'))
    return seen


def test_versions_agree(monkeypatch):
    """settings.ini, the package, setup.py and what config.json records are one version."""
    version = settings()['version']
    assert stablesam.__version__ == version == setup_kwargs(monkeypatch)['version']
    assert package_versions()['stablesam'] == version


def test_changelog_has_the_version():
    """CHANGELOG.md (generated from nbs/changelog.ipynb) has a section for this version, newest first."""
    text = (ROOT / 'CHANGELOG.md').read_text()
    sections = re.findall(r'^## (\d+\.\d+\.\d+)', text, flags=re.M)
    assert sections[0] == stablesam.__version__ and sections == sorted(sections, reverse=True)
    assert {'0.1.0', '0.2.0'} <= set(sections)


def test_extras_named_in_errors_exist(monkeypatch):
    """Every `stablesam[NAME]` the library's messages name is an extra of setup.py, and dev installs them all."""
    extras = setup_kwargs(monkeypatch)['extras_require']
    named = set()
    for path in (ROOT / 'stablesam').glob('*.py'):
        named |= set(re.findall(r"stablesam\[(\w+)\]", path.read_text())) - {'extra'}   # less require's template
    integrations = (ROOT / 'stablesam' / 'integrations.py').read_text()
    named |= set(re.findall(r"optional_base\('\w+', '\w+', '(\w+)'\)", integrations))
    named |= set(re.findall(r"require\('[\w.]+', '(\w+)'\)", (ROOT / 'stablesam' / 'loggers.py').read_text()))
    assert {'lightning', 'transformers', 'tensorboard', 'wandb', 'slurm'} <= named
    assert named <= set(extras) - {'dev'}
    for name in named: assert set(extras[name]) <= set(extras['dev']), name


def test_sdist_carries_what_setup_reads():
    """setup.py reads settings.ini and README.md: MANIFEST.in puts them in the sdist."""
    manifest = (ROOT / 'MANIFEST.in').read_text().split()
    assert {'settings.ini', 'README.md'} <= set(manifest)
