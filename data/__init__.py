"""Data formats, the tokenizer, converters for real datasets and the synthetic world (see data/README.md).

The stages see a dataset's programmatic judge, when it has one, only through load_judge: a prepare script
that can judge its own data writes judge.json ({"module": "data.NAME.judge"}) into its output folder.
"""

import importlib
from pathlib import Path

from data.formats import DataError, read_jsonl


def load_judge(data_dir):
    """The dataset's judge (an object with the methods of data/synthetic/judge.py's Judge), or None for data
    judged by nobody but its reward model (HH-RLHF, OpenAssistant, ...)."""
    path = Path(data_dir) / "judge.json"
    if not path.exists():
        return None
    records = read_jsonl(path, {"module": str})
    module = records[0]["module"] if records else ""
    if not module.startswith("data.") or not all(part.isidentifier() for part in module.split(".")):
        raise DataError(f"{path}: 'module' must name a module under data/, got {module!r}")
    try:
        return importlib.import_module(module).Judge()
    except (ImportError, AttributeError) as e:
        raise DataError(f"{path}: {module} has no Judge ({e})") from None
