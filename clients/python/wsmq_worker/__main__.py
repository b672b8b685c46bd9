"""``python -m wsmq_worker module:attribute``: runs the Worker defined in a module.

The module (a module name, or the path of a ``.py`` file) is imported (the current directory is on the path, as for ``python -m``), its
attribute (``worker`` when none is named) must be a ``wsmq_worker.Worker``, and its ``run()``
serves until SIGTERM or SIGINT, then drains. Exits 0 after a drain, 64 (EX_USAGE) when the
target cannot be loaded, 1 when the worker fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from .worker import Worker

EX_USAGE = 64


def load(target: str) -> Worker:
    """The Worker named by ``module[:attribute]`` or ``path/to/file.py[:attribute]``; raises
    ValueError saying what is wrong."""
    module_name, _, attribute = target.rpartition(":") if ":" in target else (target, "", "")
    attribute = attribute or "worker"
    if not module_name:
        raise ValueError(f"{target!r} names no module (expected module:attribute)")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _import_file(module_name)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"cannot import {module_name!r}: {e}") from None
    value = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Worker):
        raise ValueError(f"{target} is a {type(value).__name__}, not a wsmq_worker.Worker")
    return value


def _import_file(path: str):
    """Imports the Python file at ``path`` as a module named after it; its directory goes on
    ``sys.path`` first, so that it imports its neighbours as a script would."""
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsmq_worker", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="module:attribute of the Worker (attribute defaults to worker)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pika logs each socket step at INFO and every failed connection attempt as an ERROR with a
    # traceback; the worker logs what matters of both itself.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        worker = load(args.target)
    except ValueError as e:
        print(f"python -m wsmq_worker: {e}", file=sys.stderr)
        return EX_USAGE
    try:
        worker.run()
    except Exception as e:
        logging.getLogger("wsmq_worker").error("the worker failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
