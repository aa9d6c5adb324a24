"""Data formats, the tokenizer, converters for real datasets and the synthetic world (see data/README.md).

The stages see a dataset's programmatic judge, when it has one, only through load_judge: a prepare script
that can judge its own data writes judge.json ({"module": "data.NAME.judge"}) into its output folder.
"""

import importlib
import json
from pathlib import Path


def load_judge(data_dir):
    """The dataset's judge (an object with the methods of data/synthetic/judge.py's Judge), or None for data
    judged by nobody but its reward model (HH-RLHF, OpenAssistant, ...)."""
    path = Path(data_dir) / "judge.json"
    if not path.exists():
        return None
    module = json.loads(path.read_text())["module"]
    if not module.startswith("data.") or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{path}: 'module' must name a module under data/, got {module!r}")
    return importlib.import_module(module).Judge()
