"""Worker process entry: ``python -m parley.relay.recorder finalize <manifest.json>`` or
``compose <session dir>``. Prints one JSON object per line: ``{"progress": 0.42}`` and finally
``{"done": {...}}``. The relay runs remuxing and composing here, never on its event loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("finalize", "compose"):
        print("usage: python -m parley.relay.recorder finalize MANIFEST | compose SESSION_DIR")
        return 2
    last = [-1.0]

    def progress(fraction: float) -> None:
        if fraction - last[0] >= 0.02 or fraction >= 1.0:
            last[0] = fraction
            _emit({"progress": round(fraction, 3)})

    if argv[0] == "finalize":
        from .finalize import finalize

        manifest = finalize(Path(argv[1]), progress)
        _emit({"done": manifest.to_dict()})
    else:
        from .compose import compose

        try:
            result = compose(Path(argv[1]), progress)
        except Exception as exc:  # reported as a state, not a traceback
            result = {"state": "failed", "reason": f"cannot compose: {exc}"}
        _emit({"done": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
