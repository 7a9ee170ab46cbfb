"""Re-render the option tables of README.md and docs/*.md from the config dataclasses (``make docs``).

Each table sits between ``<!-- options: COMMAND -->`` and ``<!-- /options -->``; the text around it is left alone.
``--check`` writes nothing and exits 1 when a table is stale (what tests/unit/cli/test_option_docs.py checks).

    python scripts/gen_option_docs.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alignloop.cli.options_doc import pages, sync_file  # noqa: E402


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = {str(p.relative_to(ROOT)): s for p in pages(ROOT) if (s := sync_file(p, write=not check))}
    for page, commands in stale.items():
        print(f"{page}: {'stale' if check else 'updated'}: {', '.join(commands)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
