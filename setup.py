"""Packaging shim: metadata lives in setup.cfg; the numbered migrations in sql/ are installed as
data files (share/wordloom-outbox/sql) so an installed package finds them."""

from glob import glob

from setuptools import setup

setup(data_files=[("share/wordloom-outbox/sql", sorted(glob("sql/*.sql")))])
