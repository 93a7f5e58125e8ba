"""``crosstalk init DIR``: a starter test project for a team's own repository.

Writes a profile (variable file) for the target, one example suite on the installed
resources, ``requirements.txt`` pinning this version of robotframework-crosstalk, a GitHub
Actions workflow (suites sharded with pabot, merged, summarised on the run's page), a
Jenkinsfile, a README and a .gitignore.  Existing files are kept unless ``force``.

Example:
    write_project(Path("my-chat-tests"))
"""

from __future__ import annotations

from pathlib import Path

from . import __version__

TEMPLATES = Path(__file__).resolve().parent / "templates"

# template file -> where it goes in the project
FILES = {
    "profile.py": "profile.py",
    "example.robot": "tests/chat_isolation.robot",
    "requirements.txt": "requirements.txt",
    "github-workflow.yml": ".github/workflows/crosstalk.yml",
    "Jenkinsfile": "Jenkinsfile",
    "README.md": "README.md",
    "gitignore": ".gitignore",
}


def render(template: str, project: str) -> str:
    return (TEMPLATES / template).read_text().replace("@VERSION@", __version__).replace("@NAME@", project)


def write_project(directory: Path, force: bool = False, out=print) -> list[Path]:
    """Write the starter files into ``directory``; SystemExit (one line) if one exists and not ``force``."""
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise SystemExit(f"crosstalk init: {directory} is a file: give a directory for the project.")
    targets = {template: directory / relative for template, relative in FILES.items()}
    existing = [str(path.relative_to(directory)) for path in targets.values() if path.exists()]
    if existing and not force:
        raise SystemExit(f"crosstalk init: {directory} already has {', '.join(existing)}: "
                         "choose an empty directory or pass --force to overwrite.")
    for template, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(template, directory.name))
    (directory / "results").mkdir(exist_ok=True)
    out(f"Wrote a Crosstalk test project to {directory}:")
    for path in targets.values():
        out(f"  {path.relative_to(directory)}")
    out(f"Next: cd {directory} && python3 -m venv .venv && . .venv/bin/activate && "
        "pip install -r requirements.txt && robot --variablefile profile.py --outputdir results tests/")
    return list(targets.values())
