"""On the API page, a docstring's ``chapters/NN_name.ipynb`` becomes a link to that chapter.

normlib's docstrings name the chapter that derives each function as a plain path (readable in
a terminal and an editor); here it is rewritten into a ``:doc:`` reference, which Sphinx
checks (a chapter that does not exist fails the build under ``-n -W``).
"""

import re

_CHAPTER = re.compile(r"``chapters/(\d\d_\w+)\.ipynb``")


def _link_chapters(app, what, name, obj, options, lines):
    lines[:] = [_CHAPTER.sub(r":doc:`/chapters/\1`", line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _link_chapters)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
