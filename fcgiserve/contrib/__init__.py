"""Integrations with frameworks; each lives in its own subpackage (``fcgiserve.contrib.django``)."""
