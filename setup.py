"""Packaging shim: metadata lives in setup.cfg. The numbered migrations ship inside the package
(wordloom_outbox/migrations, package_data), so nothing is installed outside site-packages."""

from setuptools import setup

setup()
