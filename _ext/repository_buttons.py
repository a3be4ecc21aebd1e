"""Repository, issue and launch buttons only when the book has a public repository.

The buttons are made from the git remote ``origin`` (or the ``NORMBOOK_REPOSITORY``
environment variable, for a build outside a clone) when it is a public GitHub, GitLab or
Bitbucket URL; otherwise they are hidden, so that no page links to a placeholder.
"""

import os
import re
import subprocess

_PUBLIC = re.compile(
    r"^(?:https://|ssh://git@|git@)(?P<host>github\.com|gitlab\.com|bitbucket\.org)[/:]"
    r"(?P<owner>[\w.-]+)/(?P<name>[\w.-]+?)(?:\.git)?/?$"
)


def public_repository(remote: str) -> str | None:
    """The https URL of a public repository remote, or None (a local path, a private host)."""
    match = _PUBLIC.match(remote.strip())
    return f"https://{match['host']}/{match['owner']}/{match['name']}" if match else None


def _origin(folder) -> str:
    try:
        result = subprocess.run(["git", "-C", str(folder), "remote", "get-url", "origin"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout if result.returncode == 0 else ""


def _configure(app, config):
    url = public_repository(os.environ.get("NORMBOOK_REPOSITORY") or _origin(app.srcdir))
    options = config.html_theme_options
    if url is None:
        # jupyter-book's default repository_url is its own; never link to it
        options["repository_url"] = ""
        for button in ("use_repository_button", "use_issues_button", "use_edit_page_button"):
            options[button] = False
        options["launch_buttons"] = {}
        return
    options.update(repository_url=url, repository_branch="main", path_to_docs="",
                   use_repository_button=True, use_issues_button=True)
    options["launch_buttons"] = {"notebook_interface": "jupyterlab",
                                 "binderhub_url": "https://mybinder.org",
                                 "colab_url": "https://colab.research.google.com"}


def setup(app):
    app.connect("config-inited", _configure)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
