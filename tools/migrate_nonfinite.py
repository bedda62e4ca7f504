"""Rewrite old sweep records whose `nonfinite` field is a list of keys into the current dict form, once.

Records written before `stablesam.runs.strict_json` (the first learning-rate sweep, commit ac2fd4b) name the
entries they wrote as `null` in a list: `"nonfinite": ["train_loss", "test_loss"]`. The current form is a dict
from each entry to what it was: `{"train_loss": "nan", "test_loss": "inf"}`. An old record cannot say whether an
entry was NaN or an infinity (the value was dropped when it was written, and no other field of the record tells),
so each listed entry is recorded as `"nonfinite"`: non-finite, which of NaN/inf/-inf unknown. Nothing is guessed.

Only the lines holding a list change (their keys keep their order); every other line is kept byte for byte, and
the file is replaced atomically. Running it again changes nothing. Usage:
`python tools/migrate_nonfinite.py [RECORDS.jsonl ...]` (default: the committed learning-rate sweeps).
"""
import json
import sys
from pathlib import Path

from stablesam.runs import atomic_write

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = (ROOT / 'results/lr_sweep/mnist-10k-3ep/records.jsonl',
           ROOT / 'results/efficient/lr-sweep-fcn-10k/records.jsonl')
UNKNOWN = 'nonfinite'  # NaN or an infinity, the old record does not say which


def migrate_line(line):
    """`line` with a list-form `nonfinite` rewritten as a dict; None if it needs no change."""
    if not line.strip(): return None
    record = json.loads(line)
    names = record.get('nonfinite')
    if not isinstance(names, list): return None
    record['nonfinite'] = {name: UNKNOWN for name in names}
    return json.dumps(record, allow_nan=False)


def migrate(path):
    """Migrate one records file in place; the number of records rewritten."""
    lines = Path(path).read_text().split('\n')
    new = [migrate_line(line) for line in lines]
    changed = sum(n is not None for n in new)
    if changed:
        text = '\n'.join(line if n is None else n for line, n in zip(lines, new))
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return changed


def main(argv=None):
    """Migrate the given records files (default: `DEFAULT`) and say how many records each had in the old form."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or list(DEFAULT)
    for path in paths: print(f"{path}: {migrate(path)} records migrated")
    return 0


if __name__ == '__main__': sys.exit(main())
