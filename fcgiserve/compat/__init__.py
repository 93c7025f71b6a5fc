"""Drop-in replacements for other FastCGI servers' APIs: ``compat.flup`` (``flup.server.fcgi``) and
``compat.flup_fork`` (``flup.server.fcgi_fork``). See docs/migrating-from-flup.md.
"""
