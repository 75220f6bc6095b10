// MathJax for the `$$ ... $$` blocks (and `\( ... \)` inline) that pymdownx.arithmatex
// (generic: true) leaves in `.arithmatex` elements, in pages and docstrings alike: the setup
// mkdocs-material documents (Reference > Math), re-typesetting after instant navigation.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache()
  MathJax.typesetClear()
  MathJax.texReset()
  MathJax.typesetPromise()
})
