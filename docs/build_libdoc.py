"""Generate libdoc HTML for every Crosstalk keyword library into docs/libraries/."""

from __future__ import annotations

import sys
from pathlib import Path

from robot.libdoc import LibraryDocumentation, libdoc

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "libraries"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    libraries = sorted((ROOT / "libraries").glob("Crosstalk*.py"))
    if not libraries:
        print("No libraries/Crosstalk*.py found: nothing to document.", file=sys.stderr)
        return 1
    failures = 0
    for library in libraries:
        target = OUT / f"{library.stem}.html"
        rc = libdoc(str(library), str(target), quiet=True)
        print(f"{'ok  ' if rc == 0 else 'FAIL'} {library.name} -> {target.relative_to(ROOT)}")
        failures += rc != 0
        missing = [kw.name for kw in LibraryDocumentation(str(library)).keywords
                   if "example" not in kw.doc.lower()]
        if missing:
            print(f"FAIL {library.name}: keywords without an example: {', '.join(missing)}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
