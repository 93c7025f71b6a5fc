"""The Django app that brings back ``manage.py runfcgi``.

Add ``"fcgiserve.contrib.django"`` to ``INSTALLED_APPS``; see docs/migrating-from-runfcgi.md.
"""
