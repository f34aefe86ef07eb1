"""Start-up check of the installed packages against the ranges the studio declares.

A package outside its range (an old transformers left in a reused environment, a gradio 7
that pip was told to ignore) fails later with a traceback deep inside a library; here it is
one line naming the package, the version found and the fix. The ranges are the ones in
pyproject.toml, read from the installed distribution's metadata, so they are declared once.
Versions newer than the lock are fine: only the declared ranges are enforced.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

from studio.errors import StudioError

DISTRIBUTION = "sd-style-studio"
FIX = "reinstall with the README's command: pip install -c tools/constraints.txt -e ."


def version_problems() -> list[str]:
    """One line per declared dependency that is missing or outside its range ([] if all fit)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return []
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or another platform's dependency
        try:
            found = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed; the studio needs {requirement}")
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            problems.append(f"{requirement.name} {found} is installed; the studio needs {requirement}")
    return problems


def check_versions() -> None:
    """Raise one ``StudioError`` naming the first misfit package and the fix."""
    problems = version_problems()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StudioError(problems[0] + more, hint=FIX)
