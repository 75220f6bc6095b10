"""mkdocs hooks (mkdocs.yml `hooks:`): checks on every built page, each a warning naming the
page, which `strict: true` (and `mkdocs build --strict`) turns into a failed build.

- A reST `.. math::` directive left in a docstring renders as a stray line and a code box,
  not an equation: the site's math is a `$$ ... $$` block (pymdownx.arithmatex, typeset by
  MathJax). Code (`<code>`, `<pre>`) is not searched: a page may show the directive in a code
  span.
- A class's "Bases:" line names no private class (`_HiddenCell`): the class template in
  docs/templates/python/material/ puts a private base's own bases in its place.
"""

import re

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("recurjax")

_CODE = re.compile(r"<(pre|code)\b.*?</\1>", re.DOTALL | re.IGNORECASE)
_BASES = re.compile(r'<p class="doc doc-class-bases">(.*?)</p>', re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_PRIVATE = re.compile(r"(?<![\w.])_\w*")


def on_page_content(html, page, **kwargs):
    where = page.file.src_uri
    count = _CODE.sub("", html).count(".. math::")
    if count:
        log.warning(
            f"{where}: {count} reST `.. math::` directive(s) in the built page; write the "
            "equation as a `$$` block (a line `$$`, the LaTeX, a line `$$`) in a raw docstring"
        )
    private = {
        name for bases in _BASES.findall(html) for name in _PRIVATE.findall(_TAG.sub("", bases))
    }
    if private:
        log.warning(
            f"{where}: private base classes named on the page: {', '.join(sorted(private))}"
        )
    return html
