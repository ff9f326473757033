"""Small fixes to the rendered site, loaded as a local Sphinx extension by ``_config.yml``.

- sphinx-thebe 0.3 adds its configuration script twice to every page under Sphinx 7, so the browser reports
  "Identifier 'THEBE_JS_URL' has already been declared" (tests/site checks for console errors); sphinx-togglebutton's
  selector is doubled the same way. Each page keeps the first copy of any script that appears twice (the copies
  differ only in a filename of None or "").
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
